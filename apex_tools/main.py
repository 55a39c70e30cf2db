"""The ``apex`` command: Invoke's ``Program`` over the apex-tools collection."""

from __future__ import annotations

import copy
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from invoke import Config, Program

from apex_tools import __version__
from apex_tools.core.config import DEFAULTS
from apex_tools.core import yamlfile
from apex_tools.core.console import EXIT_FAILED, EXIT_INTERNAL, EXIT_SETTINGS, internal_error
from apex_tools.core.errors import ApexError, SettingsError, expected_os_error
from apex_tools.core.render_safety import shown
from apex_tools.tasks import ns


# The config files looked for: never .py (Invoke would execute it), nor .json.
SUFFIXES = ("yaml", "yml")


class ApexConfig(Config):
    """Files ``/etc/apex.yaml``, ``~/.apex.yaml``, ``./apex.yaml``; env prefix ``APEX_``.

    Configuration is YAML only: Invoke would also look for ``apex.json`` and *execute*
    ``apex.py`` (``./apex.py`` in whatever folder apex runs from, ``~/.apex.py``,
    ``/etc/apex.py``, ``-f x.py``). Here no ``.py`` is looked for, one given by ``-f`` is refused,
    and every file is read by ``core/yamlfile`` (bounded, no aliases, no duplicate keys).
    """

    prefix = "apex"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._set(_file_suffixes=SUFFIXES)  # for a lazy config (a clone) loading files later

    def load_base_conf_files(self) -> None:
        # Invoke's __init__ sets its suffixes, then (unless lazy) loads /etc and ~ through here.
        self._set(_file_suffixes=SUFFIXES)
        super().load_base_conf_files()

    @staticmethod
    def global_defaults() -> dict[str, Any]:
        return {**Config.global_defaults(), **copy.deepcopy(DEFAULTS)}

    def _load_yaml(self, path: str) -> Any:
        if not os.path.lexists(path):
            raise FileNotFoundError(2, "No such file", path)  # Invoke's "not there, try the next"
        data = yamlfile.load_mapping(Path(path), "config", empty_ok=True)
        # Invoke merges the file into its defaults and calls a section given as a scalar "a bug".
        for key, value in data.items():
            if isinstance(self.global_defaults().get(key), dict) and not isinstance(value, dict):
                raise SettingsError(f"config {path}: {key}: {shown(key, value)} is not a mapping (a section: "
                                    f"{key}: followed by indented key: value lines)",
                                    "fix the section named above; `apex config` shows every key")
        return data

    def load_shell_env(self) -> None:
        """``APEX_*`` variables are read, cast and validated by ``core/config.py`` (naming the
        variable when one is wrong); Invoke's own reading would fail on them with a bare ValueError."""

    _load_yml = _load_yaml
    _load_json = _load_yaml  # JSON is YAML

    def _load_py(self, path: str) -> Any:
        raise SettingsError(f"config file {path}: a .py config file is never executed",
                            "write the configuration as YAML (apex.yaml)")


# Sub-collections whose tasks may also be named with a space: ``apex lab up`` = ``apex lab.up``.
SPACED = {"lab": ("up", "down", "status"), "bundle": ("export", "import")}


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
        except ApexError as exc:  # a config file Invoke loaded for us is unusable
            print(f"apex: {exc}", file=sys.stderr)
            if not exit:
                raise
            sys.exit(EXIT_SETTINGS)
        except Exception as exc:  # noqa: BLE001 - the program edge: whatever escaped is a bug
            expected = expected_os_error(exc, os.getcwd())
            if expected is not None:  # ... unless the machine failed: disk full, read-only, permissions
                print(f"apex: {expected}", file=sys.stderr)
                if not exit:
                    raise
                sys.exit(EXIT_FAILED)
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
