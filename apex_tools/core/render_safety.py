"""What may be written into a generated document, one rule per output kind, and how values are shown.

Every value a template or a generated script receives passes :func:`checked` for the kind of
document it lands in. No kind accepts a control character (a newline in a Dockerfile value is
a new instruction; in a script, a new command; in YAML, a new key). XML values are escaped on
top (Jinja's autoescape); shell words must also be plain words (no quoting games: a value that
needs quoting is refused). Error messages show values through :func:`shown`, which masks
secrets and cuts long values.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any, Literal

from apex_tools.core.errors import ApexError

Kind = Literal["dockerfile", "shell", "xml", "yaml", "ini", "text"]

# C0 controls, DEL and the C1 controls; a tab is refused too (no value here needs one).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# A shell word that needs no quoting: what a user name, a path or an image name is made of.
_SHELL_WORD = re.compile(r"^[A-Za-z0-9_./:@%+=,-]+$")
# Keys whose values are never shown: passwords, ipmi_pass, tokens, keys, secrets.
_SECRET_KEY = re.compile(r"(pass(word|wd)?|token|key|secret)$", re.IGNORECASE)
_SHOWN_MAX = 60


class RenderError(ApexError):
    """A value cannot be written into a generated document safely."""


def is_secret_key(key: str | int | None) -> bool:
    """True for keys whose values are never echoed (``registry.password``, ``ipmi_pass``, ``token``)."""
    return isinstance(key, str) and bool(_SECRET_KEY.search(key.rsplit(".", 1)[-1]))


def shown(key: str | int | None, value: Any) -> str:
    """``value`` as an error message may show it: masked for a secret key, cut when long."""
    if is_secret_key(key) and value not in (None, ""):
        return "'********' (hidden)"
    text = repr(value)
    return text if len(text) <= _SHOWN_MAX else text[:_SHOWN_MAX - 5] + "…" + text[-4:]


def control_char(value: str) -> str | None:
    """The first control character of ``value``, as an escape (``'\\n'``), or None."""
    match = _CONTROL.search(value)
    return repr(match.group())[1:-1] if match else None


def checked(kind: Kind, value: Any, where: str) -> Any:
    """``value`` unchanged when it may be written into a ``kind`` document; else a RenderError.

    Non-strings pass (numbers, booleans and objects render through their own str).
    """
    if not isinstance(value, str):
        return value
    bad = control_char(value)
    if bad:
        raise RenderError(f"{where}: value {shown(None, value)} contains the control character {bad}; "
                          f"refusing to write it into a {kind} document",
                          "control characters never belong in a name, a path or a URL: fix the setting or "
                          "the upstream answer that carried it")
    if kind == "shell" and not _SHELL_WORD.match(value):
        raise RenderError(f"{where}: {shown(None, value)} is not a plain shell word",
                          "use letters, digits and . _ - / : @ % + = , only")
    return value


def check_values(kind: Kind, values: Any, where: str) -> None:
    """Apply :func:`checked` to every string inside ``values`` (mappings, sequences, dataclasses,
    pydantic models, paths, addresses): what a template can reach is what is checked."""
    if isinstance(values, str):
        checked(kind, values, where)
    elif isinstance(values, (PurePath, ipaddress.IPv4Address, ipaddress.IPv6Address)):
        checked(kind, str(values), where)
    elif isinstance(values, Mapping):
        for key, value in values.items():
            check_values(kind, key, where)
            check_values(kind, value, f"{where}: {key}")
    elif isinstance(values, (list, tuple, set, frozenset)):
        for value in values:
            check_values(kind, value, where)
    elif dataclasses.is_dataclass(values) and not isinstance(values, type):
        for f in dataclasses.fields(values):
            check_values(kind, getattr(values, f.name), f"{where}: {f.name}")
    elif hasattr(values, "model_fields") and not isinstance(values, type):
        for name in type(values).model_fields:
            check_values(kind, getattr(values, name), f"{where}: {name}")


def kind_of(template: str) -> Kind:
    """The output kind of a template by its name: ``*.xml.j2`` → xml, ``Dockerfile*`` → dockerfile…"""
    name = template.rsplit("/", 1)[-1].removesuffix(".j2")
    if "Dockerfile" in name:
        return "dockerfile"
    for suffix, kind in ((".xml", "xml"), (".yaml", "yaml"), (".yml", "yaml"), (".sh", "shell"),
                         (".repo", "ini"), (".conf", "ini")):
        if name.endswith(suffix):
            return kind  # type: ignore[return-value]
    return "text"
