"""Patch text and sorting: split a diff into file sections, drop what is never installed, and decide
where each part applies (service images, the overcloud disk image, the undercloud image).

The project → install path table is ``build/projects.yaml``.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from apex_tools.core.errors import PatchError, SettingsError
from apex_tools.core.render_safety import control_char
from apex_tools.core.resources import data_path, load_yaml
from apex_tools.core.settings import short_name

_DIFF = re.compile(r"^diff --git a/(?P<a>.+?) b/(?P<b>.+)$")
Destination = Literal["containers", "overcloud", "undercloud"]


@dataclass(frozen=True)
class Section:
    """One file's part of a diff (from its ``diff --git`` line to the next)."""

    path: str
    text: str


def split_diff(text: str) -> tuple[str, list[Section]]:
    """The text before the first file section (mail header, stat) and the file sections."""
    preamble: list[str] = []
    sections: list[tuple[str, list[str]]] = []
    for line in text.splitlines(keepends=True):
        match = _DIFF.match(line.rstrip("\n"))
        if match:
            sections.append((match["b"], [line]))
        elif sections:
            sections[-1][1].append(line)
        else:
            preamble.append(line)
    return "".join(preamble), [Section(path, "".join(lines)) for path, lines in sections]


def join_diff(preamble: str, sections: list[Section]) -> str:
    """Reassemble a diff; empty when no section is left."""
    return preamble + "".join(s.text for s in sections) if sections else ""


def matches(path: str, patterns: tuple[str, ...]) -> bool:
    """True when ``path`` matches one of the shell ``patterns`` (``*`` crosses folders)."""
    return any(fnmatch.fnmatchcase(path, p) for p in patterns)


_HUNK = re.compile(r"^@@ -\d+(?:,(\d+))? \+\d+(?:,(\d+))? @@")
# Extended git headers naming a path as it is (no a/ b/ prefix).
_PATH_HEADERS = ("rename from ", "rename to ", "copy from ", "copy to ")


def _path_problem(path: str) -> str | None:
    """Why ``path`` (as a diff names it) could land outside the target folder, or None."""
    if path == "/dev/null":
        return None
    if not path:
        return "is empty"
    if path.startswith("/"):
        return "is absolute"
    if ".." in path.split("/"):
        return "climbs out with .."
    if control_char(path):
        return f"holds the control character {control_char(path)}"
    return None


def check_patch(text: str, what: str) -> None:
    """Refuse a patch that is no git-style diff, whose hunks are cut short, or that names a path
    which is absolute or climbs out with ``..`` (in ``diff --git``, ``---``/``+++`` or rename/copy
    headers), before anything applies it. ``what`` names the patch in the error."""
    hint = "the patch must be a git-style diff of files inside its project; fix or drop it"
    _, sections = split_diff(text)
    if not sections:
        raise PatchError(f"{what}: not a git-style patch (no `diff --git` file section)", hint)
    for section in sections:
        old = new = 0
        for number, line in enumerate(section.text.splitlines(), 1):
            if old > 0 or new > 0:  # inside a hunk: content, not headers
                tag = line[:1]
                if tag not in (" ", "-", "+", "\\") and line:
                    raise PatchError(f"{what}: {section.path}: hunk cut short at its line {number}: {line[:60]!r}",
                                     hint)
                old -= tag in (" ", "-") or not line
                new -= tag in (" ", "+") or not line
                continue
            paths: list[str] = []
            if number == 1:
                match = _DIFF.match(line)
                paths = [match["a"], match["b"]] if match else []
            elif line.startswith(("--- ", "+++ ")):
                name = line[4:].split("\t", 1)[0]
                paths = [name, name.split("/", 1)[-1]]  # as written, and as patch -p1 reads it
            elif line.startswith(_PATH_HEADERS):
                paths = [line.split(" ", 2)[2]]
            elif hunk := _HUNK.match(line):
                old, new = int(hunk[1] or 1), int(hunk[2] or 1)
            for path in paths:
                problem = _path_problem(path)
                if problem:
                    raise PatchError(f"{what}: path {path!r} {problem}; refusing the patch", hint)
        if old > 0 or new > 0:
            raise PatchError(f"{what}: {section.path}: the last hunk is cut short ({old} old and {new} new "
                             "lines missing)", hint)


def diff_paths(text: str) -> list[str]:
    """The file paths a diff touches, in order."""
    return [s.path for s in split_diff(text)[1]]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class _Route(_Strict):
    prefix: str
    path: str


class _Rule(_Strict):
    match: str | tuple[str, ...]
    python: bool = False
    path: str | None = None
    routes: tuple[_Route, ...] = ()

    def matches(self, short: str) -> bool:
        return matches(short, (self.match,) if isinstance(self.match, str) else self.match)


class _ProjectsFile(_Strict):
    python_path: dict[str, str]
    python_not_installed: tuple[str, ...]
    projects: tuple[_Rule, ...]


@dataclass(frozen=True)
class Location:
    """Where a project's code is installed: a python package (under the python path) or a folder."""

    project: str
    python: bool
    path: str
    routes: tuple[tuple[str, str], ...] = ()
    not_installed: tuple[str, ...] = ()


@dataclass(frozen=True)
class ProjectTable:
    """The parsed ``build/projects.yaml``."""

    source: Path
    data: _ProjectsFile

    def python_path(self, os_version: str, override: str = "") -> str:
        """The site-packages folder of ``os_version`` (``override`` wins when set)."""
        return override or self.data.python_path[os_version]

    def locate(self, project: str, os_version: str, python_override: str = "") -> Location:
        """Where ``project`` (``openstack/<name>`` or ``<name>``) is installed."""
        short = short_name(project)
        for rule in self.data.projects:
            if not rule.matches(short):
                continue
            routes = tuple((r.prefix, r.path) for r in rule.routes)
            if rule.python:
                path = self.python_path(os_version, python_override)
                return Location(project, True, path, routes, self.data.python_not_installed)
            assert rule.path is not None  # validated at load
            module = short.removeprefix("puppet-")
            return Location(project, False, rule.path.format(name=short, module=module), routes)
        raise SettingsError(
            f"project {project!r}: no install location known (build/projects.yaml of {self.source})",
            "add a rule for it to build/projects.yaml (python: true, or a path)",
        )


@lru_cache(maxsize=None)
def load_projects(path: Path | None = None) -> ProjectTable:
    """Read and validate the project table (``build/projects.yaml`` unless ``path``)."""
    source = Path(path or data_path("build", "projects.yaml"))
    try:
        data = _ProjectsFile.model_validate(load_yaml(source.read_text()))
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        raise SettingsError(f"project table {source}: {exc}", "fix build/projects.yaml") from None
    bad = [str(r.match) for r in data.projects if not r.python and not r.path]
    if bad:
        raise SettingsError(f"project table {source}: rules {bad} have neither python: true nor a path",
                            "give each rule python: true or a path")
    return ProjectTable(source, data)


@dataclass(frozen=True)
class PatchPart:
    """The part of one patch that applies in one place: service images or a disk-image folder."""

    destination: Destination
    target_dir: str
    text: str
    images: tuple[str, ...] = ()
    files: tuple[str, ...] = ()


@dataclass(frozen=True)
class Sorted:
    """A patch sorted: its parts, and the files dropped because they are never installed."""

    parts: tuple[PatchPart, ...]
    dropped: tuple[str, ...] = field(default=())


def sort_patch(
    text: str,
    location: Location,
    side: Literal["overcloud", "undercloud"],
    images: tuple[str, ...],
    containers: bool,
    drop: tuple[str, ...],
) -> Sorted:
    """Split ``text`` by where its files are installed.

    Sections matching ``drop`` (release notes, tests) are dropped; route prefixes become their
    own disk-image parts; python code goes to ``images`` (the deployment's images carrying the
    project) when the overcloud is containerized; everything else goes to ``side``'s disk image.
    """
    preamble, sections = split_diff(text)
    dropped = [s.path for s in sections if matches(s.path, drop)]
    sections = [s for s in sections if not matches(s.path, drop)]
    parts: list[PatchPart] = []
    for prefix, path in location.routes:
        routed = [s for s in sections if s.path.startswith(prefix)]
        sections = [s for s in sections if not s.path.startswith(prefix)]
        if routed:
            parts.append(PatchPart(side, path, join_diff(preamble, routed), files=tuple(s.path for s in routed)))
    if location.python:
        # Files at the repository's top (setup.cfg, requirements.txt) and non-package folders
        # (doc/, devstack/, ...) are not installed under site-packages.
        skip = [s for s in sections if "/" not in s.path or s.path.split("/", 1)[0] in location.not_installed]
        dropped += [s.path for s in skip]
        sections = [s for s in sections if s not in skip]
    if sections:
        body = join_diff(preamble, sections)
        files = tuple(s.path for s in sections)
        if side == "overcloud" and containers and images and location.python:
            parts.append(PatchPart("containers", location.path, body, images=images, files=files))
        else:
            parts.append(PatchPart(side, location.path, body, files=files))
    return Sorted(tuple(parts), tuple(dropped))
