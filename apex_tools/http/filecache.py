"""The on-disk record of a cached upstream file: validators beside it, a partial file, a lock.

A cached file ``<dir>/<name>`` keeps the validators of the upstream version it holds in
``<dir>/<name>.meta.json`` (URL, ETag, Last-Modified, size, verified digests, and the local
file's own size and mtime, so a file replaced behind our back is noticed). A download
streams into ``<dir>/.<name>.partial``, with ``.<name>.partial.json`` saying which upstream
version it is, so an interrupted run never leaves a file that looks cached and the next
attempt, or the next run, can resume it. ``.<name>.lock`` keeps two runs apart.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO

from apex_tools.core.state import atomic_write, lock_file, unlock_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Validators:
    """One upstream version of a file, and (once cached) the local copy's stat."""

    url: str
    etag: str = ""
    last_modified: str = ""
    size: int = -1
    digests: dict[str, str] = field(default_factory=dict)
    mtime_ns: int = 0

    def if_range(self) -> str:
        """The validator for ``If-Range``: a strong ETag, else Last-Modified, else none."""
        if self.etag and not self.etag.startswith("W/"):
            return self.etag
        return self.last_modified

    def identity(self) -> dict[str, object]:
        """What names this upstream version (for fingerprints and unpack records)."""
        return {"url": self.url, "etag": self.etag, "last_modified": self.last_modified, "size": self.size,
                "digests": dict(sorted(self.digests.items()))}


def meta_path(dest: Path) -> Path:
    """Where the validators of ``dest`` live."""
    return dest.with_name(dest.name + ".meta.json")


def partial_path(dest: Path) -> Path:
    """Where a download of ``dest`` streams to before it is verified and renamed."""
    return dest.with_name(f".{dest.name}.partial")


def partial_meta_path(dest: Path) -> Path:
    """Which upstream version the partial file of ``dest`` holds (for ``If-Range``)."""
    return dest.with_name(f".{dest.name}.partial.json")


def read_validators(path: Path) -> Validators | None:
    """Validators from a record file; None when missing or unreadable (a torn record is no record)."""
    try:
        return Validators(**json.loads(path.read_text()))
    except (FileNotFoundError, ValueError, TypeError):
        return None


def write_validators(path: Path, validators: Validators) -> None:
    """Replace the record file ``path`` with ``validators``."""
    # Renamed into place so it is never torn, but not fsynced: a record lost in a crash only
    # means one download more (the file it describes no longer matches, or the partial restarts).
    atomic_write(path, json.dumps(asdict(validators), indent=2, sort_keys=True) + "\n", durable=False)


def cached_validators(dest: Path) -> Validators | None:
    """The validators of the cached ``dest``, or None when it is missing or not the file we wrote."""
    validators = read_validators(meta_path(dest))
    try:
        st = dest.stat()
    except FileNotFoundError:
        return None
    if validators is None or (st.st_size, st.st_mtime_ns) != (validators.size, validators.mtime_ns):
        return None
    # Recorded without any verified digest (an older apex, or an unverified copy): never "up to date".
    return validators if validators.digests else None


@contextlib.contextmanager
def open_at(path: Path, offset: int) -> Iterator[BinaryIO]:
    """The partial file opened for writing at ``offset``, with anything after it cut off."""
    mode = "r+b" if offset and path.exists() else "wb"
    with path.open(mode) as handle:
        handle.seek(offset)
        handle.truncate()
        yield handle


def discard_partial(dest: Path) -> None:
    """Forget a download in progress: the partial file and its record."""
    for path in (partial_path(dest), partial_meta_path(dest)):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def artifact_lock(dest: Path, doing: str = "fetching") -> Iterator[None]:
    """Hold a per-artifact lock so two runs never write the same files; wait for the other run."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    suffix = "" if doing == "fetching" else f".{doing}"
    path = dest.with_name(f".{dest.name}{suffix}.lock")
    try:
        fd = lock_file(path, 0)
    except TimeoutError:
        log.info("%s: another run is %s it; waiting for it to finish", dest.name, doing)
        fd = lock_file(path, None)
    try:
        yield
    finally:
        unlock_file(fd)
