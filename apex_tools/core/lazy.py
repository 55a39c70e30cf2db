"""Modules loaded on first use: heavy libraries only some targets need (paramiko, cryptography)
stay out of a run that never touches them, while the code keeps a plain top-level name."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any, cast


class _Deferred:
    """Stands for a module; the first attribute read imports it (a plain import, so packages
    that import themselves in circles behave as usual), later reads go straight to it."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        module = importlib.import_module(self._name)
        self.__dict__.update(module.__dict__)  # later reads skip __getattr__
        return getattr(module, attr)

    def __repr__(self) -> str:
        return f"<deferred module {self._name!r}>"


def lazy_import(name: str) -> ModuleType:
    """``name``, imported when one of its attributes is first read. Annotate the real import
    under ``TYPE_CHECKING`` for the type checker."""
    return cast(ModuleType, _Deferred(name))
