"""Find the data trees (build/, dockerfiles/, ansible/, ...) from a checkout or an installed wheel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

_PACKAGE = Path(__file__).resolve().parent.parent  # apex_tools/
DATA_TREES = ("build", "dockerfiles", "registry", "ansible", "config")


def data_path(tree: str, *parts: str) -> Path:
    """Path of ``tree/parts...``: inside the wheel's ``_data`` when installed, else the checkout."""
    if tree not in DATA_TREES:
        raise ValueError(f"unknown data tree {tree!r}; one of {', '.join(DATA_TREES)}")
    installed = _PACKAGE / "_data" / tree
    base = installed if installed.is_dir() else _PACKAGE.parent / tree
    return base.joinpath(*parts)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load``, through libyaml's loader when PyYAML has it (the bundled catalog parses
    several times faster; same results)."""
    import yaml

    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
