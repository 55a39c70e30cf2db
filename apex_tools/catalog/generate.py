"""Writing ``build/tripleo/<release>/{images,heat}.yaml`` from TripleO's sdists (``scripts/update-catalog``).

Each supported release maps to one major version of tripleo-common and of
tripleo-heat-templates; the newest sdist of that major is downloaded with ``pip download
--no-deps --no-binary :all:`` into a cache directory (never into git), unpacked there and read
by ``catalog.tripleo``. The files name the package and version they came from; regenerating
from the versions they name gives the same bytes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from apex_tools.catalog import tripleo
from apex_tools.core.errors import ApexError
from apex_tools.core.settings import OS_VERSIONS
from apex_tools.core.state import write_if_changed

TRIPLEO_COMMON = "tripleo-common"
THT = "tripleo-heat-templates"
# Release → (tripleo-common major, tripleo-heat-templates major); master = the last TripleO release.
MAJORS: dict[str, tuple[int, int]] = {
    "queens": (8, 8),
    "rocky": (9, 9),
    "stein": (10, 10),
    "train": (11, 11),
    "ussuri": (12, 12),
    "victoria": (13, 13),
    "wallaby": (15, 14),
    "master": (18, 18),
}
# Old pbr-based sdists need a setuptools without flat-layout discovery to produce metadata.
BUILD_CONSTRAINT = "setuptools<60\n"
_SDIST = re.compile(r"^(?P<package>[a-z-]+?)-(?P<version>[0-9][0-9.]*)\.tar\.gz$")
_HEADER_SOURCE = re.compile(r"^# Source: (?P<package>[a-z-]+) (?P<version>[0-9][0-9.]*)", re.M)


def default_cache() -> Path:
    """``$XDG_CACHE_HOME/apex-tools/tripleo`` (``~/.cache/…``): the sdists and their unpacked trees."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "apex-tools" / "tripleo"


def _cached(cache: Path, package: str, major: int) -> list[tuple[tuple[int, ...], Path]]:
    found = []
    for path in cache.glob(f"{package}-*.tar.gz"):
        m = _SDIST.match(path.name)
        if m and m["package"] == package:
            version = tuple(int(p) for p in m["version"].split(".") if p)
            if version[0] == major:
                found.append((version, path))
    return sorted(found)


def download(cache: Path, package: str, spec: str) -> None:
    """``pip download --no-deps --no-binary :all: <package><spec>`` into ``cache``."""
    cache.mkdir(parents=True, exist_ok=True)
    constraint = cache / "build-constraints.txt"
    constraint.write_text(BUILD_CONSTRAINT)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
           # The sdist itself, but wheels for its build backend (pbr), built in isolation.
           "--only-binary", "setuptools,pbr,wheel", "--use-pep517",
           "--dest", str(cache), f"{package}{spec}"]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PIP_CONSTRAINT": str(constraint)})
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise ApexError(f"pip download {package}{spec} failed (exit {done.returncode}): {tail}",
                        "check the network and PyPI; the sdists are cached once downloaded")


def sdist(cache: Path, package: str, major: int, version: str | None = None, fetch: bool = True) -> Path:
    """The sdist of ``package``: exactly ``version`` when given, else the newest of ``major``."""
    if version:
        path = cache / f"{package}-{version}.tar.gz"
        if not path.is_file() and fetch:
            download(cache, package, f"=={version}")
    else:
        if fetch:
            download(cache, package, f">={major},<{major + 1}")
        found = _cached(cache, package, major)
        path = found[-1][1] if found else cache / f"{package}-{major}.x.tar.gz"
    if not path.is_file():
        raise ApexError(f"{path.name} is not in {cache}", "run scripts/update-catalog with the network to fetch it")
    return path


def unpack(archive: Path) -> Path:
    """The unpacked tree beside the sdist (unpacked once; only regular files and folders, no
    absolute or ``..`` paths: Python 3.11.2's tarfile has no ``filter=``)."""
    target = archive.with_name(archive.name.removesuffix(".tar.gz"))
    if target.is_dir():
        return target
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            parts = Path(member.name).parts
            if not (member.isfile() or member.isdir()) or member.name.startswith("/") or ".." in parts:
                continue
            dest = tmp.joinpath(*parts)
            if member.isdir():
                dest.mkdir(parents=True, exist_ok=True)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            if source is not None:
                dest.write_bytes(source.read())
    # An sdist holds one top folder (<name>-<version>/): that folder becomes the tree.
    inner = [p for p in tmp.iterdir() if p.is_dir()]
    if len(inner) == 1 and len(list(tmp.iterdir())) == 1:
        inner[0].rename(target)
        tmp.rmdir()
    else:
        tmp.rename(target)
    return target


def _version_of(archive: Path) -> str:
    m = _SDIST.match(archive.name)
    assert m is not None
    return m["version"]


def _comments(header: list[str]) -> str:
    return "".join(f"# {line}\n".replace("# \n", "#\n") for line in header)


def _dump(header: list[str], data: dict[str, Any]) -> str:
    return _comments(header) + yaml.safe_dump(data, default_flow_style=False, sort_keys=True, width=1000)


def _dump_json(header: list[str], data: dict[str, Any]) -> str:
    """The header's comments, then ``data`` as JSON: still a YAML file, but read by every run
    (``tht.heat_templates``) 30 times faster than YAML (0.3 ms against 11 ms for master's)."""
    return _comments(header) + json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def images_file(release: str, version: str, data: dict[str, Any]) -> str:
    """``images.yaml``: tripleo-common's image → parameters → services, and its Ceph defaults."""
    header = [
        f"Source: {TRIPLEO_COMMON} {version} ({', '.join(data['sources'])})",
        f"TripleO's container images of {release}: image → the heat parameters it fills → the services",
        "that use it (OS::TripleO::Services:: left off); neutron_driver: only with that driver.",
        "Generated by scripts/update-catalog; do not edit.",
    ]
    body = {"release": release, "package": TRIPLEO_COMMON, "version": version,
            "ceph_defaults": data["ceph_defaults"], "images": data["images"], "ceph_images": data["ceph_images"]}
    return _dump(header, body)


def heat_file(release: str, version: str, data: dict[str, Any]) -> str:
    """``heat.yaml``: THT's parameter names, environment files, default roles and registries."""
    header = [
        f"Source: {THT} {version}",
        f"tripleo-heat-templates of {release}: every declared parameter name, every environment file,",
        "the services of the default Controller and Compute roles, the default resource registry and",
        "the registries of the environment files Apex scenarios add (services only, short names),",
        "every template file, and the template files each environment file's registry maps.",
        "Generated by scripts/update-catalog; do not edit.",
    ]
    body = {"release": release, "package": THT, "version": version, **data}
    return _dump_json(header, body)


@dataclass(frozen=True)
class Written:
    release: str
    path: Path
    changed: bool


def pinned_versions(out_dir: Path, release: str) -> tuple[str | None, str | None]:
    """The tripleo-common and THT versions the committed files of ``release`` name (or None)."""
    found: dict[str, str] = {}
    for name in ("images.yaml", "heat.yaml"):
        path = out_dir / release / name
        if path.is_file():
            m = _HEADER_SOURCE.search(path.read_text())
            if m:
                found[m["package"]] = m["version"]
    return found.get(TRIPLEO_COMMON), found.get(THT)


def release_sdists(cache: Path, release: str, pins: Path | None = None, fetch: bool = True) -> tuple[Path, Path]:
    """The tripleo-common and THT sdists of ``release``: the versions the files under ``pins``
    name (e.g. ``build/tripleo``), else the newest of each major."""
    tc_major, tht_major = MAJORS[release]
    tc_pin, tht_pin = pinned_versions(pins, release) if pins else (None, None)
    return (sdist(cache, TRIPLEO_COMMON, tc_major, tc_pin, fetch), sdist(cache, THT, tht_major, tht_pin, fetch))


def generate(out_dir: Path, cache: Path, releases: tuple[str, ...] = OS_VERSIONS, newest: bool = False,
             fetch: bool = True, log: Callable[[str], None] = lambda _: None, pins: Path | None = None) -> list[Written]:
    """Write each release's ``images.yaml`` and ``heat.yaml`` under ``out_dir/<release>/``.

    Without ``newest`` the versions the files under ``pins`` (default ``out_dir``) name are used
    again (byte-for-byte regeneration); with it, the newest sdist of each major is fetched.
    """
    written = []
    for release in releases:
        tc, tht = release_sdists(cache, release, None if newest else (pins or out_dir), fetch)
        log(f"{release}: {tc.name}, {tht.name}")
        texts = {
            "images.yaml": images_file(release, _version_of(tc), tripleo.read_tripleo_common(unpack(tc))),
            "heat.yaml": heat_file(release, _version_of(tht), tripleo.read_heat_templates(unpack(tht))),
        }
        for name, text in texts.items():
            path = out_dir / release / name
            path.parent.mkdir(parents=True, exist_ok=True)
            written.append(Written(release, path, write_if_changed(path, text.encode())))
    return written
