"""The local registry's storage, read and written directly: bundle import's and push-registry's
fast path.

Pushing through the registry's API takes its upload path (the blob lands in ``_uploads/…``, is
hashed, moved into place), the path ``skopeo copy`` takes too: a 256 MiB PUT took 1.15 s here
where a GET of it with a sha256 took 0.23 s, so no HTTP client beats skopeo by much; and for many
small images every request costs the registry 1.5 to 4 ms of CPU (a HEAD, a manifest PUT with its
synced writes, a blob's POST and PUT). When the local registry is the one this work dir started
(Debian's docker-registry, distribution 2.8, the filesystem driver under the rendered config's
``rootdirectory``), the blobs, repository links and manifests go in its own layout:

  <root>/docker/registry/v2/blobs/sha256/<hex[:2]>/<hex>/data                   a blob or manifest's bytes
  <root>/docker/registry/v2/repositories/<repo>/_layers/sha256/<hex>/link       ``sha256:<hex>``
  <root>/docker/registry/v2/repositories/<repo>/_manifests/revisions/sha256/<hex>/link
  <root>/docker/registry/v2/repositories/<repo>/_manifests/tags/<tag>/current/link
  <root>/docker/registry/v2/repositories/<repo>/_manifests/tags/<tag>/index/sha256/<hex>/link

A blob is written in one pass (read → hash → write), through a temporary file in the same folder
renamed into place only when the digest matches, its bytes synced before the rename as the
registry syncs its own; links are written the same way, unsynced, after what they name (a lost
or empty link reads as absent; ``flush`` syncs everything before a run records it). A manifest
is stored only when every blob and child manifest it names is linked in its repository: the
check the registry makes. Bundle import PUTs its manifests through the API; push-registry
(``RegistryClient.storage``) writes them too, reads its checks there, and asks the registry
through its API, at the end, for one image of the parameter file. The rendered config has no ``storage.cache`` (no blob
descriptor cache that could miss our writes; a config with one is not written into).

Anything else (a registry not ours, not on this machine, or whose storage this process does
not see, such as a registry container without our work dir mounted) keeps the API.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import secrets
import threading
from pathlib import Path
from typing import IO, Any

from apex_tools.bundle.layout import IntegrityError, copy_verified, digest_hex, is_digest
from apex_tools.core.errors import ApexError, BundleError
from apex_tools.core.state import atomic_file, atomic_write

log = logging.getLogger(__name__)

V2 = Path("docker", "registry", "v2")
# distribution's repository name grammar: no empty, "." or ".." component can reach a path.
_REPOSITORY = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
PROBE_REPOSITORY = "apex-storage-probe"
# distribution's tag grammar.
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


class RegistryStorage:
    """The filesystem storage of a registry known to serve it (see ``local_storage``).

    Paths are plain strings inside: a mirror writes a few hundred small files, and pathlib's
    parsing would cost more than the writes.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.v2 = self.root / V2
        self._v2 = str(self.v2)

    def _blob(self, digest: str) -> str:
        hexed = digest_hex(digest)
        return f"{self._v2}/blobs/sha256/{hexed[:2]}/{hexed}/data"

    def _repo(self, repository: str) -> str:
        if not _REPOSITORY.match(repository):
            raise BundleError(f"repository name {repository!r} is not a registry repository name",
                              "the bundle manifest is corrupt or hostile: do not import it")
        return f"{self._v2}/repositories/{repository}"

    def _link(self, repository: str, digest: str) -> str:
        return f"{self._repo(repository)}/_layers/sha256/{digest_hex(digest)}/link"

    def blob_path(self, digest: str) -> Path:
        return Path(self._blob(digest))

    def link_path(self, repository: str, digest: str) -> Path:
        return Path(self._link(repository, digest))

    def has_blob(self, digest: str, size: int) -> bool:
        """True when the blob's data is there (a ``data`` file is only ever complete: renamed in)."""
        try:
            return os.stat(self._blob(digest)).st_size == size
        except FileNotFoundError:
            return False

    def write_blob(self, digest: str, size: int, stream: IO[bytes], item: str) -> bool:
        """Stream a blob in, verified; a mismatch raises IntegrityError and leaves nothing. False
        when it was already there (the stream is not read)."""
        path = self.blob_path(digest)
        if self.has_blob(digest, size):
            _clear_leftovers(path)
            return False
        try:
            with atomic_file(path, durable=False) as out:
                copy_verified(stream, size, out, item, digest, write_behind=True)
                _sync(out)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                path.parent.rmdir()  # the blob's folder, when nothing else is in it
            if isinstance(exc, OSError):
                if self.has_blob(digest, size):
                    return False  # another import renamed the same blob in meanwhile
                raise _write_error(item, path, exc) from None
            raise
        _clear_leftovers(path)
        return True

    def _write_small(self, digest: str, data: bytes, item: str) -> None:
        """An in-memory blob (a manifest, a signature), verified, written unless already there."""
        if self.has_blob(digest, len(data)):
            return
        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise IntegrityError(item, digest, actual, len(data))
        _put_file(self._blob(digest), data, item)

    def link(self, repository: str, digest: str, item: str) -> None:
        """Link a blob into a repository (what a blob mount does), once its data is there."""
        if not os.path.isfile(self._blob(digest)):
            raise BundleError(f"{item}: blob {digest} is not in the registry's storage {self.root}",
                              "run the import again (it reads the blob from the bundle)")
        _write_link(self._link(repository, digest), digest, item)

    def mount(self, repository: str, digest: str) -> bool:
        """Link the blob into ``repository`` when its data is in the storage (any repository's);
        False when it is not (``RegistryClient.mount_blob``'s answer with a storage)."""
        if not os.path.isfile(self._blob(digest)):
            return False
        _write_link(self._link(repository, digest), digest, f"blob {repository}@{digest}")
        return True

    def receive(self, repository: str, digest: str, stream: IO[bytes] | bytes, size: int, item: str) -> None:
        """Write the blob (verified) and link it into ``repository``: an upload's end state."""
        if isinstance(stream, bytes):
            self._write_small(digest, stream, item)
        else:
            self.write_blob(digest, size, stream, item)
        _write_link(self._link(repository, digest), digest, item)

    def flush(self) -> None:
        """Everything written so far on disk (the links are not synced one by one): before a
        run records what it put here."""
        fd = os.open(self._v2 if os.path.isdir(self._v2) else str(self.root), os.O_RDONLY)
        try:
            if _syncfs(fd) != 0:
                os.sync()
        finally:
            os.close(fd)

    def linked_size(self, repository: str, digest: str) -> int | None:
        """The blob's size when ``repository`` holds it (linked, data there), else None."""
        if _read_link(self._link(repository, digest)) != digest:
            return None
        try:
            return os.stat(self._blob(digest)).st_size
        except FileNotFoundError:
            return None

    # -- manifests, in distribution's layout -------------------------------------------------
    #   <repo>/_manifests/revisions/sha256/<hex>/link              the repository holds the manifest
    #   <repo>/_manifests/tags/<tag>/current/link                   the tag → ``sha256:<hex>``
    #   <repo>/_manifests/tags/<tag>/index/sha256/<hex>/link        every digest the tag has named

    def _revision(self, repository: str, digest: str) -> str:
        return f"{self._repo(repository)}/_manifests/revisions/sha256/{digest_hex(digest)}/link"

    def _tag(self, repository: str, tag: str) -> str:
        if not _TAG.match(tag):
            raise BundleError(f"tag {tag!r} is not a registry tag", "tags are [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
        return f"{self._repo(repository)}/_manifests/tags/{tag}"

    def manifest(self, repository: str, reference: str) -> tuple[str, bytes] | None:
        """(digest, bytes) of the manifest ``reference`` (a tag or a digest) names in
        ``repository``, as the registry would serve it; None when it would answer 404."""
        digest = reference if reference.startswith("sha256:") else _read_link(
            f"{self._tag(repository, reference)}/current/link")
        # A tag link a crash left empty (or anything not a digest) names nothing.
        if digest is None or not is_digest(digest) or _read_link(self._revision(repository, digest)) != digest:
            return None
        try:
            with open(self._blob(digest), "rb") as handle:
                return digest, handle.read()
        except FileNotFoundError:
            return None

    def missing_for(self, repository: str, blobs: list[str], children: list[str]) -> list[str]:
        """What a manifest names that ``repository`` lacks (blobs linked, child manifests held):
        the check the registry makes before it accepts a manifest."""
        return [d for d in blobs if self.linked_size(repository, d) is None] + \
            [d for d in children if _read_link(self._revision(repository, d)) != d]

    def put_manifest(self, repository: str, reference: str, digest: str, raw: bytes) -> None:
        """Store a manifest (checked by the caller: ``missing_for``) under its digest and, when
        ``reference`` is a tag, tag it: the bytes first, the tag last, each renamed in once synced."""
        item = f"manifest {repository}@{digest}"
        tag = None if reference.startswith("sha256:") else self._tag(repository, reference)
        self._write_small(digest, raw, item)
        _write_link(self._revision(repository, digest), digest, item)
        if tag is not None:
            _write_link(f"{tag}/index/sha256/{digest_hex(digest)}/link", digest, item)
            _write_link(f"{tag}/current/link", digest, item)


def _syncfs(fd: int) -> int:
    """syncfs(2) on the file system holding ``fd``: only that one, unlike sync(); -1 when unavailable."""
    import ctypes

    try:
        return int(ctypes.CDLL(None, use_errno=True).syncfs(fd))
    except (OSError, AttributeError):
        return -1


def _read_link(path: str) -> str | None:
    try:
        with open(path) as handle:
            return handle.read()
    except (FileNotFoundError, NotADirectoryError):
        return None


def _write_link(path: str, digest: str, item: str) -> None:
    """A link file holding ``digest``, left as it is when it already does.

    Not synced, unlike a blob's bytes (a mirror writes four links per blob it writes): a crash
    may lose a link or leave it empty, and a link that does not hold its digest reads as absent
    (here and to the registry), so the next run writes it again. A link never names bytes that
    are not on disk: the bytes are synced before they are renamed in, and linked only after.
    """
    if _read_link(path) != digest:
        _put_file(path, digest.encode(), item, durable=False)


def _put_file(path: str, data: bytes, item: str, durable: bool = True) -> None:
    """A small file written whole in a temporary file of this thread's beside it (synced unless
    not ``durable``), then renamed in. Writers of one file (threads signing the same empty
    config) never share a temporary file; what a killed writer left is removed by the next
    write of that file (a folder made just now holds nothing to remove)."""
    folder, name = os.path.split(path)
    tmp = f"{folder}/.{name}.{os.getpid()}-{threading.get_ident()}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    try:
        try:
            fd, made = os.open(tmp, flags, 0o644), False
        except FileNotFoundError:
            os.makedirs(folder, exist_ok=True)
            fd, made = os.open(tmp, flags, 0o644), True
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if durable:
                os.fdatasync(fd)  # as the registry syncs its own writes: never renamed in torn
        finally:
            os.close(fd)
        try:
            os.replace(tmp, path)
        except FileNotFoundError:
            # Another writer of the same bytes took ours for a leftover: it renamed its own in.
            if _read_bytes(path) != data:
                raise
        if not made:
            for left in os.listdir(folder):
                if left.startswith(f".{name}.") and left.endswith(".tmp"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(f"{folder}/{left}")
    except OSError as exc:
        raise _write_error(item, Path(path), exc) from None


def _read_bytes(path: str) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:
        return None


def _clear_leftovers(path: Path) -> None:
    """Remove the temporary files a killed import left beside ``path`` (once it is in place)."""
    for left in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(OSError):
            left.unlink()


def _sync(out: IO[bytes]) -> None:
    """The file's bytes to disk before it is renamed in, as the registry's own writes are; the
    rename itself is not synced (neither is the registry's): a crash may lose it, never tear it."""
    out.flush()
    os.fdatasync(out.fileno())


def _write_error(item: str, path: Path, exc: OSError) -> BundleError:
    return BundleError(f"{item}: cannot write {path}: {exc.strerror or exc}",
                       "free space (or fix the permissions) in the local registry's storage, then import again")


def local_storage(address: str, work_dir: Path, client: Any) -> tuple[RegistryStorage | None, str]:
    """The storage of the registry answering at ``address`` when it is the one ``work_dir``
    started and this process sees what it serves; else None and why (the API is used then)."""
    import yaml

    from apex_tools.core.resources import load_yaml
    from apex_tools.registry.server import is_local_address, local_registry_pid, own_container, paths, split_address

    if not is_local_address(split_address(address)[0]):
        return None, f"registry {address} is not on this machine"
    config_path = paths(work_dir)["config"]
    try:
        config = load_yaml(config_path.read_text())
        storage = config["storage"]
        root = Path(storage["filesystem"]["rootdirectory"])
        served = config["http"]["addr"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        return None, f"no registry config of this work dir to read ({config_path}: {exc})"
    if served != address:
        return None, f"the registry this work dir configures serves {served}, not {address}"
    if set(storage) - {"filesystem", "delete", "maintenance"} or (storage.get("maintenance") or {}).get("readonly"):
        return None, f"{config_path} configures storage apex does not write into directly"
    if local_registry_pid(work_dir) is None and own_container() is None:
        return None, f"the registry at {address} is not the one this work dir started"
    if not (root.is_dir() and os.access(root, os.W_OK)):
        return None, f"its storage {root} is not writable here"
    found = RegistryStorage(root)
    if not _probe(found, client):
        return None, f"the registry at {address} does not serve {root} as this process sees it"
    return found, f"writing blobs straight into {root}"


def _probe(storage: RegistryStorage, client: Any) -> bool:
    """Write a random blob and its link, ask the registry for it, remove both: True when it saw it."""
    data = secrets.token_bytes(32)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blob, link = storage.blob_path(digest), storage.link_path(PROBE_REPOSITORY, digest)
    try:
        atomic_write(blob, data, durable=False)
        atomic_write(link, digest, durable=False)
        return client.has_blob(PROBE_REPOSITORY, digest) is not None
    except (OSError, ApexError) as exc:
        log.debug("storage probe: %s", exc)
        return False
    finally:
        # Only what the probe wrote, and the folders it made that hold nothing else.
        for path, top in ((blob, storage.v2 / "blobs"), (link, storage.v2 / "repositories")):
            with contextlib.suppress(OSError):
                path.unlink()
            folder = path.parent
            while folder != top:
                try:
                    folder.rmdir()
                except OSError:
                    break
                folder = folder.parent
