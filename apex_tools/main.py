"""The ``apex`` command: Invoke's ``Program`` over the apex-tools collection."""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from typing import Any

from invoke import Config, Program

from . import __version__
from .config import DEFAULTS, EffectiveConfig, Layer, effective_config

# Top-level keys of Invoke's own that may sit in the same config file as ours.
INVOKE_KEYS = frozenset(Config.global_defaults())


def invoke_file_layers(config: Config) -> list[Layer]:
    """The config files Invoke loaded (system, user, project, ``-f`` runtime), lowest first."""
    layers = []
    for level in ("system", "user", "project", "runtime"):
        data = getattr(config, f"_{level}", None) or {}
        path = getattr(config, f"_{level}_path", None)
        if data:
            layers.append(Layer(f"{level} file {path}" if path else f"{level} file", data))
    return layers


def options_from(config: Config, environ: Mapping[str, str], flags: Mapping[str, Any] | None = None) -> EffectiveConfig:
    """The effective configuration of a task: Invoke's files, ``APEX_*``, then the task's flags."""
    return effective_config(invoke_file_layers(config), environ, flags, INVOKE_KEYS)


class ApexConfig(Config):
    """Files ``/etc/apex.yaml``, ``~/.apex.yaml``, ``./apex.yaml``; env prefix ``APEX_``."""

    prefix = "apex"

    @staticmethod
    def global_defaults() -> dict[str, Any]:
        return {**Config.global_defaults(), **copy.deepcopy(DEFAULTS)}


class ApexProgram(Program):
    """Always loads the bundled collection, and the project file ``./apex.yaml`` from the cwd."""

    def load_collection(self) -> None:
        from .tasks import ns

        # Invoke's bundled-namespace mode loads no project file (its own TODO) and hides
        # --list, so the collection is "loaded" here instead, with the cwd as the project.
        self.config.set_project_location(os.getcwd())
        self.config.load_project()
        self.collection = ns

    def update_config(self, merge: bool = True) -> None:
        # Invoke only reads INVOKE_RUNTIME_CONFIG; honour our prefix as well.
        if self.args.config.value is None and os.environ.get("APEX_RUNTIME_CONFIG"):
            self.args.config.value = os.environ["APEX_RUNTIME_CONFIG"]
        super().update_config(merge)


program = ApexProgram(
    name="apex-tools",
    binary="apex",
    binary_names=["apex"],
    config_class=ApexConfig,
    version=__version__,
)
