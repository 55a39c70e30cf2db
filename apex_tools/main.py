"""The ``apex`` command: Invoke's ``Program`` over the apex-tools collection."""

from __future__ import annotations

import copy
import os
import shlex
import sys
from typing import Any

from invoke import Config, Program

from apex_tools import __version__
from apex_tools.core.config import DEFAULTS
from apex_tools.core.console import EXIT_INTERNAL, internal_error
from apex_tools.tasks import ns


class ApexConfig(Config):
    """Files ``/etc/apex.yaml``, ``~/.apex.yaml``, ``./apex.yaml``; env prefix ``APEX_``."""

    prefix = "apex"

    @staticmethod
    def global_defaults() -> dict[str, Any]:
        return {**Config.global_defaults(), **copy.deepcopy(DEFAULTS)}


# Sub-collections whose tasks may also be named with a space: ``apex lab up`` = ``apex lab.up``.
SPACED = {"lab": ("up", "down", "status")}


def join_spaced(argv: list[str]) -> list[str]:
    """``[..., "lab", "up", ...]`` → ``[..., "lab.up", ...]`` (Invoke names sub-tasks with a dot)."""
    out: list[str] = []
    words = iter(range(len(argv)))
    for i in words:
        word = argv[i]
        if word in SPACED and i + 1 < len(argv) and argv[i + 1] in SPACED[word]:
            out.append(f"{word}.{argv[i + 1]}")
            next(words, None)
        else:
            out.append(word)
    return out


class ApexProgram(Program):
    """Always loads the bundled collection, and the project file ``./apex.yaml`` from the cwd."""

    def load_collection(self) -> None:
        # Invoke's bundled-namespace mode loads no project file (its own TODO) and hides
        # --list, so the collection is "loaded" here instead, with the cwd as the project.
        self.config.set_project_location(os.getcwd())
        self.config.load_project()
        self.collection = ns

    def run(self, argv: list[str] | str | None = None, exit: bool = True) -> None:
        """Invoke's run with ``lab up`` spelled with a space too; an exception nothing expected is
        one line and exit code 3, not a traceback."""
        words = shlex.split(argv) if isinstance(argv, str) else list(sys.argv if argv is None else argv)
        try:
            super().run(join_spaced(words), exit)
        except Exception as exc:  # noqa: BLE001 - the program edge: whatever escaped is a bug
            print(internal_error(exc, verbose="--verbose" in words), file=sys.stderr)
            if not exit:
                raise
            sys.exit(EXIT_INTERNAL)

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
