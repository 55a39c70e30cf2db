"""Every YAML file a user hands in, read one bounded, strict way.

A settings file is small: more than :data:`MAX_BYTES`, or anything but a regular file (a
directory, ``/dev/zero``, a fifo), is refused before it is read. The text must be UTF-8 and
hold no NUL (a binary file). YAML aliases are refused (a few hundred bytes of nested aliases
expand to gigabytes: the "billion laughs"), as are duplicate keys (YAML says the last one wins,
silently: ``ceph: true`` then ``ceph: false``), naming both lines. Every problem is a
``SettingsError`` naming the path, so it exits 2, never 3.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any

import yaml

from apex_tools.core.errors import SettingsError
from apex_tools.core.render_safety import shown

MAX_BYTES = 4 << 20
# Nesting deeper than this is no settings file (and PyYAML would recurse into a RecursionError).
MAX_DEPTH = 64


def read_text(path: Path, what: str, max_bytes: int = MAX_BYTES) -> str:
    """The text of a small regular UTF-8 file, or a SettingsError naming ``path`` and the cause."""
    path = Path(path)
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            raise SettingsError(f"{what} {path}: is a directory", f"give the path of a {what} file")
        if not stat.S_ISREG(st.st_mode):
            raise SettingsError(f"{what} {path}: not a regular file (a device, fifo or socket)",
                                f"give the path of a {what} file")
        if st.st_size > max_bytes:
            raise SettingsError(f"{what} {path}: {st.st_size} bytes, more than the {max_bytes >> 20} MiB "
                                f"a {what} file may have", "give the right file: settings files are small")
        with open(path, "rb") as handle:
            raw = handle.read(max_bytes + 1)
    except FileNotFoundError:
        raise SettingsError(f"{what} {path}: no such file", "give the path of an existing file") from None
    except OSError as exc:
        cause = "a loop of symbolic links" if exc.errno == errno.ELOOP else exc.strerror
        raise SettingsError(f"{what} {path}: cannot read: {cause}", "check the path and its permissions") from None
    if len(raw) > max_bytes:
        raise SettingsError(f"{what} {path}: more than {max_bytes >> 20} MiB", "give the right file")
    nul = raw.find(b"\0")
    if nul >= 0:
        raise SettingsError(f"{what} {path}: a binary file (NUL byte at offset {nul})",
                            f"a {what} file is YAML text")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise SettingsError(f"{what} {path}: line {line}: not UTF-8 (byte {raw[exc.start]:#04x} at offset "
                            f"{exc.start})", "save the file as UTF-8") from None


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader without aliases, with duplicate keys an error and bounded nesting."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.constructor.ConstructorError(
                None, None, f"alias *{event.anchor} found: aliases are not allowed in settings files "
                            "(write the value out)", event.start_mark)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.constructor.ConstructorError(
                    None, None, f"nested more than {MAX_DEPTH} levels deep", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:
                continue  # an unhashable key: SafeLoader reports it below
            line = key_node.start_mark.line + 1
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {first}, again on line {line})",
                    key_node.start_mark)
            seen[key] = line
        return super().construct_mapping(node, deep)


_StrictLoader.add_constructor("tag:yaml.org,2002:map", _StrictLoader.construct_yaml_map)


def parse(text: str, source: str) -> Any:
    """YAML ``text`` under the strict rules; a SettingsError naming ``source``, line and column."""
    loader = _StrictLoader(text)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark else ""
        raise SettingsError(f"{source}:{where} not valid YAML: {getattr(exc, 'problem', None) or exc}",
                            "fix the YAML (aliases and duplicate keys are refused in settings files)") from None
    finally:
        loader.dispose()


def load(path: Path, what: str) -> Any:
    """Read and parse the YAML file ``path`` (a ``what`` file) under the strict rules."""
    return parse(read_text(path, what), str(path))


def load_mapping(path: Path, what: str, empty_ok: bool = False) -> dict[str, Any]:
    """:func:`load`, and the top level must be a mapping (or nothing at all when ``empty_ok``)."""
    data = load(path, what)
    if data is None and empty_ok:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"{path}: (top level): {shown(None, data)}: expected a mapping", f"a {what} file is a YAML mapping (key: value lines)")
    return data
