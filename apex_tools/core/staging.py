"""Staging folders a target builds its outputs in, and the sweep of those a killed run left.

A staging folder is ``.<kind>.<pid>.<random>`` beside the output it becomes: removed when its
block ends (also on SIGTERM/SIGINT, which the program edge turns into an exception). A run
killed outright (SIGKILL, a crash) leaves it, and possibly the children working in it
(virt-customize and its qemu appliance): the next run, under the same work-dir lock, ends the
processes whose command line names a folder whose run is gone and removes the folder.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from apex_tools.core.processes import terminate

LOG = logging.getLogger(__name__)

# ".ceph-loop.123.abcd": kind, then the pid of the run that made it (older versions wrote none).
_NAME = re.compile(r"^\.(?P<kind>[a-z][a-z-]*)\.(?:(?P<pid>\d+)\.)?[^/]+$")


@contextlib.contextmanager
def staging_dir(parent: Path, kind: str) -> Iterator[Path]:
    """A fresh ``parent/.<kind>.<pid>.<random>`` folder for the block; removed after, even on error."""
    parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(dir=parent, prefix=f".{kind}.{os.getpid()}."))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def users_of(folder: Path) -> list[int]:
    """Pids of processes working in ``folder`` (their current directory) or naming something in it
    on their command line: virt-customize runs there, its qemu reads the image there."""
    inside = str(folder) + "/"
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            cwd = os.readlink(proc / "cwd") + "/"
            if cwd.startswith(inside) or inside.encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
    return found


def sweep_stale(parents: Iterable[Path], kinds: Iterable[str]) -> list[str]:
    """End the leftover processes of, and remove, every staging folder of ``kinds`` in ``parents``
    whose run is gone; one line per folder removed. Call it holding the work dir's lock."""
    wanted = set(kinds)
    swept = []
    for parent in parents:
        if not parent.is_dir():
            continue
        for entry in sorted(parent.iterdir()):
            match = _NAME.match(entry.name)
            if not match or match["kind"] not in wanted or not entry.is_dir() or entry.is_symlink():
                continue
            if match["pid"] and int(match["pid"]) != os.getpid() and _alive(int(match["pid"])):
                continue  # another run (of another work dir sharing this folder) is using it
            users = users_of(entry)
            if users:
                LOG.warning("ending %d leftover process(es) of a killed run: %s", len(users), users)
                for pid in users:
                    terminate(pid)
            shutil.rmtree(entry, ignore_errors=True)
            swept.append(f"removed {entry} (left by a killed run)"
                         + (f", ended {len(users)} process(es) using it" if users else ""))
    return swept


def sweep_temp_files(folders: Iterable[Path]) -> list[str]:
    """Remove the ``.<name>.<random>.tmp`` files an atomic write killed half-way left (``state.atomic_file``)
    in ``folders``; one line per file. Call it holding the work dir's lock (nothing else writes there)."""
    swept = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for entry in sorted(folder.glob(".*.tmp")):
            if entry.is_file() and not entry.is_symlink():
                entry.unlink()
                swept.append(f"removed {entry} (a write a killed run left unfinished)")
    return swept
