"""Run state under the work dir: input fingerprints, recorded outputs, atomic writes, the run lock."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from apex_tools.core.errors import StateError


def fingerprint(inputs: Any) -> str:
    """A stable sha256 of JSON-able ``inputs`` (keys sorted, paths and sets normalised)."""
    blob = json.dumps(inputs, sort_keys=True, separators=(",", ":"), default=_jsonable)
    return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json", by_alias=True)
    raise TypeError(f"cannot fingerprint {type(value).__name__}")


def fsync_path(path: Path) -> None:
    """Flush ``path`` (a file's bytes, or a folder's renames) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: Path, mode: int = 0o644, durable: bool = True) -> Iterator[BinaryIO]:
    """Write ``path`` through a temporary file in the same folder, fsynced and renamed on success.

    On any error the temporary file is removed and ``path`` is left as it was. ``durable=False``
    skips the fsyncs: never torn, but possibly lost in a crash (for records cheap to redo).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
        if durable:
            fsync_path(path.parent)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(path)  # a write on the open file (disk full) names no path by itself
        raise


def atomic_write(path: Path, data: bytes | str, mode: int = 0o644, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically."""
    with atomic_file(path, mode, durable) as handle:
        handle.write(data.encode() if isinstance(data, str) else data)


def write_if_changed(path: Path, data: bytes | str, mode: int = 0o644) -> bool:
    """Atomically write ``data`` unless ``path`` already holds exactly it; True when written.

    The mode is enforced either way: a secrets file found with the same content but another
    mode (0644 from an older run, or a hand copy) is made ``mode`` again."""
    raw = data.encode() if isinstance(data, str) else data
    with contextlib.suppress(FileNotFoundError):
        if Path(path).read_bytes() == raw:
            if os.stat(path).st_mode & 0o7777 != mode:
                os.chmod(path, mode)  # a secrets file found readable by others
            return False
    atomic_write(path, raw, mode)
    return True


def make_private(path: Path) -> None:
    """Make an existing secrets file 0600 (owner only), whatever mode it was found with."""
    if os.stat(path).st_mode & 0o7777 != 0o600:
        os.chmod(path, 0o600)


DIGEST_KEY = "digest.key"


def _digest_key(work_dir: Path, create: bool) -> bytes:
    path = Path(work_dir) / "state" / DIGEST_KEY
    for _ in range(2):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            if not create:
                # A dry run before any real run: nothing recorded can match anyway.
                return os.urandom(32)
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            except FileExistsError:
                continue  # another run made it first: read theirs
            with os.fdopen(fd, "wb") as out:
                key = os.urandom(32)
                out.write(key)
                out.flush()
                os.fsync(out.fileno())
            return key
        with os.fdopen(fd, "rb") as handle:
            if os.fstat(handle.fileno()).st_mode & 0o077:
                os.fchmod(handle.fileno(), 0o600)
            key = handle.read(64)
        if len(key) == 32:
            return key
        raise StateError(f"{path}: damaged digest key ({len(key)} bytes, not 32)",
                         "delete it: the next run makes a new one (and redoes what it fingerprinted)")
    raise StateError(f"{path}: cannot be read or created", "check the work dir's permissions")


def keyed_digest(work_dir: Path, data: bytes | str, create: bool = True) -> str:
    """An HMAC-SHA256 of ``data`` under the work dir's own random key (``state/digest.key``, 0600).

    For records of secret-bearing files (instackenv.json holds the IPMI passwords): a plain
    sha256 in a readable record would let anyone confirm a password guess offline; this digest
    still says "changed or not" but means nothing without the key."""
    raw = data.encode() if isinstance(data, str) else data
    return "hmac-sha256:" + hmac.new(_digest_key(work_dir, create), raw, hashlib.sha256).hexdigest()


def sha256_file(path: Path, advance: Callable[[int], None] = lambda n: None) -> str:
    """The sha256 of a file, read in chunks; ``advance`` is told how many bytes were read."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(4 << 20):
            digest.update(chunk)
            advance(len(chunk))
    return digest.hexdigest()


def file_stamp(path: Path) -> dict[str, int] | None:
    """Size and mtime of ``path`` (what "unchanged since recorded" compares), None when missing."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


@dataclass(frozen=True)
class Record:
    """What a target's last successful run consumed and produced."""

    target: str
    fingerprint: str
    outputs: dict[str, dict[str, int] | None]
    data: dict[str, Any]
    finished: float

    def outputs_intact(self) -> bool:
        """True when every recorded output still exists unchanged (size and mtime)."""
        return all(file_stamp(Path(p)) == meta for p, meta in self.outputs.items())

    def output_intact(self, path: Path) -> bool:
        """True when ``path`` is a recorded output and still unchanged."""
        key = str(Path(path).resolve())
        return key in self.outputs and file_stamp(Path(key)) == self.outputs[key]


class StateStore:
    """Per-target records in ``<work_dir>/state/<target>.json``."""

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = Path(work_dir)
        self.folder = self.work_dir / "state"

    def _path(self, target: str) -> Path:
        return self.folder / f"{target}.json"

    def load(self, target: str) -> Record | None:
        """The last record of ``target``, or None; an unreadable record counts as none."""
        try:
            raw = json.loads(self._path(target).read_text())
            return Record(
                target=target,
                fingerprint=raw["fingerprint"],
                outputs=raw.get("outputs", {}),
                data=raw.get("data", {}),
                finished=raw.get("finished", 0.0),
            )
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None

    def is_current(self, target: str, fp: str) -> bool:
        """True when ``target`` last ran with fingerprint ``fp`` and its outputs are untouched."""
        record = self.load(target)
        return record is not None and record.fingerprint == fp and record.outputs_intact()

    def save(
        self,
        target: str,
        fp: str,
        outputs: Iterable[Path] = (),
        data: Mapping[str, Any] | None = None,
    ) -> Record:
        """Record a successful run of ``target`` (atomically)."""
        record = Record(
            target=target,
            fingerprint=fp,
            outputs={str(Path(p).resolve()): file_stamp(Path(p)) for p in sorted(map(str, outputs))},
            data=dict(data or {}),
            finished=time.time(),
        )
        payload = {
            "fingerprint": record.fingerprint,
            "outputs": record.outputs,
            "data": record.data,
            "finished": record.finished,
        }
        atomic_write(self._path(target), json.dumps(payload, indent=2, sort_keys=True, default=_jsonable) + "\n")
        return record

    def forget(self, target: str) -> None:
        """Drop the record of ``target`` so its next run redoes everything."""
        with contextlib.suppress(FileNotFoundError):
            self._path(target).unlink()


def lock_file(path: Path, timeout: float | None) -> int:
    """Take an exclusive ``flock`` on ``path`` (created if missing); its open fd for ``unlock_file``.

    Waits up to ``timeout`` seconds (None: as long as it takes), then raises ``TimeoutError``.
    (What the ``filelock`` package does on Unix, without its asyncio import on every run.)
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if timeout is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
            return fd
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"{path} is locked") from None
                time.sleep(0.05)
    except BaseException:
        os.close(fd)
        raise


def unlock_file(fd: int) -> None:
    """Release and close a lock from ``lock_file``."""
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def work_dir_lock(work_dir: Path, timeout: float = 0) -> Iterator[None]:
    """Hold the work dir's run lock; wait up to ``timeout`` seconds, then fail naming the holder."""
    work_dir = Path(work_dir)
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StateError(f"work dir {work_dir}: cannot create: {exc.strerror}", "set work_dir to a writable folder") from None
    lock_path = work_dir / ".apex.lock"
    owner_path = work_dir / ".apex.lock.owner"
    try:
        fd = lock_file(lock_path, timeout)
    except TimeoutError:
        owner = owner_path.read_text().strip() if owner_path.exists() else "unknown"
        raise StateError(
            f"work dir {work_dir} is in use by another apex run ({owner})",
            "wait for it to finish, or raise lock_timeout to wait automatically",
        ) from None
    try:
        owner_path.write_text(f"pid {os.getpid()}\n")
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            owner_path.unlink()
        unlock_file(fd)
