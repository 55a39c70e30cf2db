"""The bundle on disk: an OCI image layout plus ``apex-bundle.json``, as a folder or one tar.

  oci-layout          ``{"imageLayoutVersion": "1.0.0"}``
  index.json          one descriptor per image: its manifest's own media type (Docker stays
                      Docker), digest, size, and ``org.opencontainers.image.ref.name`` =
                      ``<repository>:<tag>``, the upstream path without the registry host
                      (``tripleomaster/centos-binary-nova-api:current-tripleo``), which is also
                      its path in the local registry
  blobs/sha256/<hex>  every manifest, config and layer once, byte-exact; the disk images and the
                      patch caches ride as blobs too, so one digest check covers everything
  apex-bundle.json    the bundle manifest: what each blob is, and the sha256 and size of every
                      other file of the bundle (``contents``)

A folder is written blob by blob through temporary files renamed into place, so a killed
export resumes by digest; ``apex-bundle.json`` comes last (a folder without it is incomplete).
A tar holds the same files in an order a reader can stream: ``oci-layout``,
``apex-bundle.json``, ``index.json``, then the blobs.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from apex_tools.core.errors import BundleError
from apex_tools.core.state import atomic_file, atomic_write

LAYOUT_FILE = "oci-layout"
INDEX_FILE = "index.json"
BUNDLE_FILE = "apex-bundle.json"
LAYOUT_BYTES = b'{"imageLayoutVersion":"1.0.0"}'
REF_NAME = "org.opencontainers.image.ref.name"
BLOB_DIR = "blobs/sha256"
CHUNK = 1 << 20
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


class IntegrityError(BundleError):
    """A bundle file's bytes do not hash to what the bundle says: names the item and both digests."""

    def __init__(self, item: str, expected: str, actual: str, size: int | None = None) -> None:
        got = f"{actual}" + (f" ({size} bytes)" if size is not None else "")
        super().__init__(f"{item}: expected {expected}, got {got}",
                         "the bundle is corrupt or was changed: copy it again from the exporting side "
                         "(nothing of this item was imported)")
        self.item, self.expected, self.actual = item, expected, actual


def is_digest(text: str) -> bool:
    """True when ``text`` is a ``sha256:<64 hex>`` digest."""
    return _DIGEST.match(text) is not None


def digest_hex(digest: str) -> str:
    """The ``<hex>`` of a ``sha256:<hex>`` digest, before it becomes part of a path (anything
    else is refused)."""
    if not is_digest(digest):
        raise BundleError(f"digest {digest!r} is not sha256:<64 hex>", "the bundle manifest is corrupt")
    return digest[7:]


def blob_name(digest: str) -> str:
    """``blobs/sha256/<hex>`` of a ``sha256:<hex>`` digest (anything else is refused)."""
    return f"{BLOB_DIR}/{digest_hex(digest)}"


def sha256_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def dumps(data: Any) -> bytes:
    """JSON as the bundle writes it: sorted keys, indented, so equal content gives equal bytes."""
    return (json.dumps(data, indent=1, sort_keys=True) + "\n").encode()


class HashingReader:
    """A read-only stream that hashes what passes through and stops at ``size`` bytes."""

    def __init__(self, stream: IO[bytes], size: int) -> None:
        self._stream = stream
        self._size = size
        self._hash = hashlib.sha256()
        self.count = 0

    def __len__(self) -> int:
        return self._size

    def read(self, amount: int = -1) -> bytes:
        left = self._size - self.count
        data = self._stream.read(left if amount is None or amount < 0 else min(amount, left)) if left > 0 else b""
        self._hash.update(data)
        self.count += len(data)
        return data

    def drain(self) -> None:
        """Read the rest (to learn the digest of what the source holds)."""
        while self.read(CHUNK):
            pass

    @property
    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()

    def verify(self, item: str, expected: str) -> None:
        """Raise IntegrityError unless the whole of ``size`` arrived and hashes to ``expected``."""
        self.drain()
        if self.count != self._size or self.digest != expected:
            raise IntegrityError(item, expected, self.digest, self.count)


WRITE_BEHIND = 8 * CHUNK


def copy_verified(stream: IO[bytes], size: int, out: IO[bytes], item: str, digest: str,
                  write_behind: bool = False) -> None:
    """Copy ``size`` bytes into the file ``out``, hashing them on the way (one pass, one reused
    buffer); IntegrityError unless they hash to ``digest``. ``write_behind``: hand each written
    window to the disk's writeback at once (for a file synced at the end)."""
    hashed = hashlib.sha256()
    buffer = memoryview(bytearray(CHUNK))
    readinto = getattr(stream, "readinto", None)
    left = size
    behind = 0  # bytes already handed to the disk's writeback
    while left:
        want = min(CHUNK, left)
        if readinto is not None:
            count = readinto(buffer[:want])
            chunk: Any = buffer[:count] if count else b""
        else:
            chunk = stream.read(want)
            count = len(chunk)
        if not count:
            break
        hashed.update(chunk)
        out.write(chunk)
        left -= count
        if write_behind and size - left - behind >= WRITE_BEHIND:
            # Start writing this window back now (DONTNEED starts writeback of dirty pages), so
            # the sync at the end waits for less: the disk works while we hash the next one.
            out.flush()
            os.posix_fadvise(out.fileno(), behind, size - left - behind, os.POSIX_FADV_DONTNEED)
            behind = size - left
    actual = "sha256:" + hashed.hexdigest()
    if left or actual != digest:
        raise IntegrityError(item, digest, actual, size - left)



# -- writing -------------------------------------------------------------------------------


class DirWriter:
    """A bundle folder: blobs through temporary files renamed into place; present ones are kept."""

    parallel = True

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        (self.root / BLOB_DIR).mkdir(parents=True, exist_ok=True)

    @staticmethod
    def present(root: Path, digest: str, size: int) -> bool:
        """True when the folder ``root`` holds the blob (a blob file is only ever complete)."""
        path = Path(root) / blob_name(digest)
        return path.is_file() and path.stat().st_size == size

    def has(self, digest: str, size: int) -> bool:
        return self.present(self.root, digest, size)

    def blob(self, digest: str, size: int, stream: IO[bytes], item: str) -> None:
        """Stream a blob into place, verifying it; a mismatch leaves nothing behind."""
        # Not fsynced blob by blob (a killed run leaves no torn blob either way); the bundle
        # manifest, written last, is.
        with atomic_file(self.root / blob_name(digest), durable=False) as out:
            copy_verified(stream, size, out, item, digest)

    def meta(self, name: str, data: bytes) -> None:
        atomic_write(self.root / name, data)

    def prune(self, keep: set[str]) -> list[str]:
        """Remove blobs not in ``keep`` (from an older export to this folder); their digests."""
        removed = []
        for path in sorted((self.root / BLOB_DIR).iterdir()):
            if path.name.startswith("."):
                if path.name.endswith(".tmp"):
                    path.unlink()  # left by a killed run
                continue
            if f"sha256:{path.name}" not in keep:
                path.unlink()
                removed.append(f"sha256:{path.name}")
        return removed

    def close(self) -> None:
        pass


class TarWriter:
    """A bundle as one tar streamed to a file object: fixed owners and times, blobs once."""

    parallel = False

    def __init__(self, fileobj: IO[bytes]) -> None:
        # 1 MiB reads and writes (tarfile copies 16 KiB at a time and buffers 10 KiB records by
        # default); the bytes written are the same.
        self.tar = tarfile.open(fileobj=fileobj, mode="w|", format=tarfile.PAX_FORMAT, bufsize=CHUNK,
                                copybufsize=CHUNK)
        self._seen: set[str] = set()
        self._dirs = False

    @staticmethod
    def _info(name: str, size: int = 0, directory: bool = False) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
        info.type, info.mode = (tarfile.DIRTYPE, 0o755) if directory else (tarfile.REGTYPE, 0o644)
        info.size = size
        return info

    def has(self, digest: str, size: int) -> bool:
        return digest in self._seen

    def blob(self, digest: str, size: int, stream: IO[bytes], item: str) -> None:
        if not self._dirs:
            self.tar.addfile(self._info("blobs", directory=True))
            self.tar.addfile(self._info(BLOB_DIR, directory=True))
            self._dirs = True
        reader = HashingReader(stream, size)
        self.tar.addfile(self._info(blob_name(digest), size), reader)
        reader.verify(item, digest)  # raised: the caller discards the whole tar
        self._seen.add(digest)

    def meta(self, name: str, data: bytes) -> None:
        self.tar.addfile(self._info(name, len(data)), io.BytesIO(data))

    def close(self) -> None:
        self.tar.close()


# -- reading -------------------------------------------------------------------------------


@dataclass
class Entry:
    """One blob of a bundle as a reader meets it; ``stream`` is None when the bundle lacks it."""

    digest: str
    size: int
    stream: IO[bytes] | None


class DirReader:
    """A bundle folder, read in the bundle manifest's order."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.where = str(self.root)
        self.document: dict[str, Any] = {}
        if not (self.root / BUNDLE_FILE).is_file():
            raise BundleError(f"{self.root}: no {BUNDLE_FILE}: not a bundle, or its export did not finish",
                              "give the folder `apex bundle export --path` wrote, after it finished")
        self.bundle_bytes = (self.root / BUNDLE_FILE).read_bytes()
        self.index_bytes = self._small(INDEX_FILE)
        self.layout_bytes = self._small(LAYOUT_FILE)

    def _small(self, name: str) -> bytes:
        try:
            return (self.root / name).read_bytes()
        except OSError as exc:
            raise BundleError(f"{self.root}: cannot read {name}: {exc.strerror}", "copy the bundle again") from None

    parallel = True

    @contextlib.contextmanager
    def entry(self, digest: str, size: int) -> Iterator[Entry]:
        """One blob, opened (random access: blobs may be read in parallel)."""
        try:
            handle = (self.root / blob_name(digest)).open("rb")
        except FileNotFoundError:
            yield Entry(digest, size, None)
            return
        with handle:
            yield Entry(digest, size, handle)

    def entries(self, wanted: list[tuple[str, int]]) -> Iterator[Entry]:
        for digest, size in wanted:
            with self.entry(digest, size) as entry:
                yield entry

    def close(self) -> None:
        pass


class TarReader:
    """A bundle tar read as a stream, front to back, never unpacked: the small files first."""

    parallel = False

    def __init__(self, path: Path) -> None:
        self.where = str(path)
        self.document: dict[str, Any] = {}
        try:
            self._file = open(path, "rb")  # noqa: SIM115 - closed by close()
        except OSError as exc:
            raise BundleError(f"{path}: {exc.strerror}", "give the tar `apex bundle export --tar` wrote") from None
        try:
            # Read in order, member by member, straight from the file (no stream buffer copies).
            self.tar = tarfile.open(fileobj=self._file, mode="r:")
            heads = {}
            for name in (LAYOUT_FILE, BUNDLE_FILE, INDEX_FILE):
                member = self.tar.next()
                if member is None or member.name != name:
                    raise BundleError(f"{path}: expected {name} as the next member, found "
                                      f"{member.name if member else 'the end'}",
                                      "give a tar written by `apex bundle export --tar`")
                extracted = self.tar.extractfile(member)
                assert extracted is not None
                heads[name] = extracted.read()
        except tarfile.TarError as exc:
            self.close()
            raise BundleError(f"{path}: not a readable tar ({exc})", "copy the bundle again") from None
        self.layout_bytes, self.bundle_bytes, self.index_bytes = (heads[n] for n in (LAYOUT_FILE, BUNDLE_FILE,
                                                                                    INDEX_FILE))

    def entries(self, wanted: list[tuple[str, int]]) -> Iterator[Entry]:
        """Every blob in the tar's order (blobs not in ``wanted`` are skipped), then the missing ones."""
        sizes = dict(wanted)
        seen: set[str] = set()
        try:
            for member in self.tar:
                if not member.isfile() or not member.name.startswith(BLOB_DIR + "/"):
                    continue
                digest = "sha256:" + member.name.rsplit("/", 1)[1]
                if digest in sizes and digest not in seen:
                    seen.add(digest)
                    yield Entry(digest, sizes[digest], self.tar.extractfile(member))
        except tarfile.TarError as exc:
            raise BundleError(f"{self.where}: the tar breaks off ({exc})", "copy the bundle again") from None
        for digest, size in wanted:
            if digest not in seen:
                yield Entry(digest, size, None)

    def close(self) -> None:
        self._file.close()


def open_bundle(path: Path | None, tar: Path | None) -> DirReader | TarReader:
    """The bundle at ``path`` (a folder) or else ``tar``, its small files read and checked."""
    if path is None and tar is None:
        raise BundleError("no bundle given", "give --path DIR or --tar FILE")
    reader: DirReader | TarReader = DirReader(path) if path is not None else TarReader(Path(str(tar)))
    try:
        document = json.loads(reader.bundle_bytes)
        contents = document["contents"]
        for name, data in ((LAYOUT_FILE, reader.layout_bytes), (INDEX_FILE, reader.index_bytes)):
            expected = contents[name]["sha256"]
            if sha256_of(data) != expected:
                raise IntegrityError(f"{reader.where}: {name}", expected, sha256_of(data), len(data))
    except (ValueError, KeyError, TypeError) as exc:
        reader.close()
        raise BundleError(f"{reader.where}: {BUNDLE_FILE} is not a bundle manifest ({exc})",
                          "give a bundle written by `apex bundle export`") from None
    except BundleError:
        reader.close()
        raise
    reader.document = document
    return reader


def read_document(path: Path) -> tuple[dict[str, Any], str]:
    """The bundle manifest of a bundle folder or tar (for ``--since``), and the bundle's id."""
    reader = open_bundle(path if path.is_dir() else None, None if path.is_dir() else path)
    try:
        return reader.document, sha256_of(reader.bundle_bytes)
    finally:
        reader.close()
