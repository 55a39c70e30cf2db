"""Import's fast path: image blobs written straight into the local registry's storage.

Pushing through the registry's API takes its upload path (the blob lands in ``_uploads/…``, is
hashed, moved into place), the path ``skopeo copy`` takes too: a 256 MiB PUT took 1.15 s here
where a GET of it with a sha256 took 0.23 s, so no HTTP client beats skopeo by much. When the local
registry is the one this work dir started (Debian's docker-registry, distribution 2.8, the
filesystem driver under the rendered config's ``rootdirectory``), import writes in its layout:

  <root>/docker/registry/v2/blobs/sha256/<hex[:2]>/<hex>/data                   the blob
  <root>/docker/registry/v2/repositories/<repo>/_layers/sha256/<hex>/link       ``sha256:<hex>``

in one pass per blob (read → hash → write), through a temporary file in the same folder renamed
into place only when the digest matches, its bytes synced before the rename as the registry
syncs its own. Manifests and tags still go through the API, so the registry checks every blob a
manifest names. The rendered config has no ``storage.cache`` (no blob descriptor cache that could
miss our writes; a config with one is not written into).

Anything else (a registry not ours, not on this machine, or whose storage this process does
not see, such as a registry container without our work dir mounted) keeps the API upload.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import secrets
from pathlib import Path
from typing import IO, Any

from apex_tools.bundle.layout import copy_verified, digest_hex
from apex_tools.core.errors import ApexError, BundleError
from apex_tools.core.state import atomic_file, atomic_write

log = logging.getLogger(__name__)

V2 = Path("docker", "registry", "v2")
# distribution's repository name grammar: no empty, "." or ".." component can reach a path.
_REPOSITORY = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
PROBE_REPOSITORY = "apex-storage-probe"


class RegistryStorage:
    """The filesystem storage of a registry known to serve it (see ``local_storage``)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.v2 = self.root / V2

    def blob_path(self, digest: str) -> Path:
        hexed = digest_hex(digest)
        return self.v2 / "blobs" / "sha256" / hexed[:2] / hexed / "data"

    def link_path(self, repository: str, digest: str) -> Path:
        if not _REPOSITORY.match(repository):
            raise BundleError(f"repository name {repository!r} is not a registry repository name",
                              "the bundle manifest is corrupt or hostile: do not import it")
        return self.v2 / "repositories" / repository / "_layers" / "sha256" / digest_hex(digest) / "link"

    def has_blob(self, digest: str, size: int) -> bool:
        """True when the blob's data is there (a ``data`` file is only ever complete: renamed in)."""
        try:
            return self.blob_path(digest).stat().st_size == size
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

    def link(self, repository: str, digest: str, item: str) -> None:
        """Link a blob into a repository (what a blob mount does), once its data is there."""
        if not self.blob_path(digest).is_file():
            raise BundleError(f"{item}: blob {digest} is not in the registry's storage {self.root}",
                              "run the import again (it reads the blob from the bundle)")
        path = self.link_path(repository, digest)
        try:
            present = path.read_bytes() == digest.encode()
        except OSError:
            present = False
        try:
            if not present:
                with atomic_file(path, durable=False) as out:
                    out.write(digest.encode())
                    _sync(out)
        except OSError as exc:
            raise _write_error(item, path, exc) from None
        _clear_leftovers(path)


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

    from apex_tools.registry.server import is_local_address, local_registry_pid, own_container, paths, split_address

    if not is_local_address(split_address(address)[0]):
        return None, f"registry {address} is not on this machine"
    config_path = paths(work_dir)["config"]
    try:
        config = yaml.safe_load(config_path.read_text())
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
