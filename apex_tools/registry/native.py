"""The native builder: a patched image made over the registry API, no container engine.

For one base image and its patches: read the base manifest and config, read its layers
top-down only until every file the patches name is decided (``mutate.resolve``), put those
files (and the links on their way) in a scratch tree, run GNU patch there as the Dockerfile
would (``patching/apply.py``), and turn what changed into one new layer, config and manifest
(``mutate``). Layer indexes are cached per layer digest, so layers the images share are read
once; every blob is uploaded once and mounted into the other repositories.

Choices (see docs/ARCHITECTURE.md "Native rebuilds"):
* mtime: every entry of the new layer gets ``max(mtime of the files it replaces, the base
  config's created) + 1 s``: fixed for the same inputs, and newer than the source it replaces,
  so Python (2.7 checks only the source mtime in a ``.pyc``) never takes old bytecode for it;
* ``.pyc``: compiled files of a patched ``.py`` that the layers read show (``X.pyc``, ``X.pyo``,
  ``__pycache__/X.*.pyc``) are whited out; Python recompiles on import. Regenerating them
  would need the image's own interpreter, i.e. a container.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import stat
import tarfile
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apex_tools.core.errors import BuildError
from apex_tools.patching.apply import PatchStep, clean, patch_paths, run_patches
from apex_tools.registry.client import Manifest, RegistryClient, RegistryHTTPError, sha256_digest
from apex_tools.registry.image_config import platform_entry
from apex_tools.registry.mutate import (
    BASE_DIGEST_LABEL,
    BASE_NAME_LABEL,
    Change,
    Found,
    LayerIndex,
    NewLayer,
    append_config,
    append_manifest,
    epoch_of,
    index_layer,
    layer_of,
    resolve,
    stale_bytecode,
)

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class NativeImage:
    """What the native builder needs of one image: its patches, in order, and the labels to add."""

    image: str
    patches: tuple[PatchStep, ...]
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Built:
    """A rebuilt image, in memory until pushed: its manifest, config and new layer, the paths changed."""

    image: str
    repository: str
    manifest: Manifest
    config: bytes
    layer: NewLayer
    changed: tuple[str, ...]


class _Hashing:
    """A raw blob stream that hashes and counts what is read, so a layer is verified as it is read.

    Reads the socket in 1 MiB blocks: tarfile asks for 10 KiB at a time, and a urllib3 read per
    10 KiB costs more than the inflating and hashing.
    """

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.hash = hashlib.sha256()
        self.count = 0
        self._buffer = b""
        self._at = 0

    def read(self, amount: int = -1) -> bytes:
        amount = amount if amount and amount > 0 else 1 << 20
        if self._at >= len(self._buffer):
            self._buffer, self._at = self.raw.read(max(amount, 1 << 20), decode_content=False), 0
            self.hash.update(self._buffer)
            self.count += len(self._buffer)
        data = self._buffer[self._at:self._at + amount]
        self._at += len(data)
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


@dataclass
class LayerCache:
    """Layer indexes by layer digest, read through one registry client; counts the bytes read."""

    client: RegistryClient
    bytes_read: int = 0
    layers_read: int = 0
    _indexes: dict[str, LayerIndex] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # One lock per layer digest: images built in parallel wait for a shared layer rather than read it twice.
    _reading: dict[str, threading.Lock] = field(default_factory=dict)

    def _read(self, repository: str, descriptor: Mapping[str, Any], keep: Callable[[str], bool]) -> LayerIndex:
        digest = descriptor["digest"]
        if "zstd" in descriptor.get("mediaType", ""):
            raise BuildError(f"{repository}: layer {digest} is zstd-compressed, which the native builder does not read",
                             "set builder: docker (or buildah) for this image")
        with self.client.open_blob(repository, digest) as response:
            stream = _Hashing(response.raw)
            try:
                index = index_layer(stream, keep)  # type: ignore[arg-type]
            except (tarfile.TarError, OSError, EOFError) as exc:
                raise BuildError(f"{repository}: layer {digest} is not a readable tar: {exc}",
                                 "re-mirror the image (push-registry --force)") from None
            stream.drain()
        with self._lock:
            self.bytes_read += stream.count
            self.layers_read += 1
        if "sha256:" + stream.hash.hexdigest() != digest:
            raise BuildError(f"{repository}: layer {digest} read back as sha256:{stream.hash.hexdigest()}",
                             "the registry holds a corrupt blob; re-mirror the image (push-registry --force)")
        return index

    def index(self, repository: str, descriptor: Mapping[str, Any], keep: Callable[[str], bool]) -> LayerIndex:
        """The layer's index (read once per digest; the bytes of kept files are kept)."""
        digest = descriptor["digest"]
        with self._lock:
            reading = self._reading.setdefault(digest, threading.Lock())
        with reading:
            if digest not in self._indexes:
                self._indexes[digest] = self._read(repository, descriptor, keep)
            return self._indexes[digest]

    def data(self, repository: str, descriptor: Mapping[str, Any], path: str) -> bytes:
        """A regular file's bytes in a layer; the layer is read again only when they were not kept."""
        index = self.index(repository, descriptor, lambda p: p == path)
        if path not in index.data:
            again = self._read(repository, descriptor, lambda p: p == path)
            with self._lock:
                index.data[path] = again.data[path]
        return index.data[path]


def _base_manifest(client: RegistryClient, repository: str, digest: str) -> Manifest:
    manifest = client.get_manifest(repository, digest)
    if manifest.is_index:
        child = platform_entry(manifest.children())
        if child is None:
            raise BuildError(f"{repository}@{digest}: an empty manifest list", "mirror a single-platform image")
        manifest = client.get_manifest(repository, child["digest"])
    return manifest


def _wanted(image: NativeImage) -> tuple[list[str], list[str], set[str]]:
    """The folders patch runs in, the files the patches name (image paths) and their tails for keeping."""
    folders: list[str] = []
    files: list[str] = []
    tails: set[str] = set()
    for step in image.patches:
        names = patch_paths(step.file.read_text(errors="surrogateescape"), step.strip)
        if not names:
            raise BuildError(f"{image.image}: {step.file.name} names no file to patch",
                             "check the patch file (a unified diff) and its -p level")
        folders.append(clean(step.target_dir))
        for name in names:
            files.append(clean(posixpath.join(step.target_dir, name)))
            tails.add("/" + name)
    return folders, files, tails


class _Scratch:
    """The scratch tree: the resolved files, folders and links, at their real paths under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.folders: set[str] = set()
        self.before: dict[str, tuple[bytes, int]] = {}

    def folder(self, path: str) -> None:
        if path and path not in self.folders:
            (self.root / path).mkdir(parents=True, exist_ok=True)
            self.folders.add(path)

    def link(self, path: str, target: str) -> None:
        where = self.root / path
        if where.is_symlink():
            return
        self.folder(posixpath.dirname(path))
        real = clean(target if target.startswith("/") else posixpath.join(posixpath.dirname(path), target))
        # Relative inside the scratch tree, so an absolute link target never leaves it.
        os.symlink(os.path.relpath(self.root / real, where.parent), where)

    def file(self, path: str, data: bytes, mode: int) -> None:
        self.folder(posixpath.dirname(path))
        where = self.root / path
        where.write_bytes(data)
        os.chmod(where, (mode & 0o7777) | 0o600)
        self.before[path] = (data, os.stat(where).st_mode & 0o7777)

    def after(self) -> dict[str, tuple[bytes, int]]:
        found = {}
        for folder, _dirs, names in os.walk(self.root):
            for name in names:
                where = Path(folder) / name
                info = os.lstat(where)
                if stat.S_ISREG(info.st_mode):
                    found[where.relative_to(self.root).as_posix()] = (where.read_bytes(), info.st_mode & 0o7777)
        return found


def build_native(client: RegistryClient, cache: LayerCache, repository: str, base_digest: str, base_name: str,
                 image: NativeImage) -> Built:
    """Patch the image ``repository@base_digest`` into one new layer, config and manifest (nothing pushed)."""
    manifest = _base_manifest(client, repository, base_digest)
    data = manifest.json()
    config = client.get_blob(repository, data["config"]["digest"])
    descriptors = list(reversed(data.get("layers", [])))
    folders, files, tails = _wanted(image)
    keep = lambda path: ("/" + path).endswith(tuple(tails))  # noqa: E731 - a predicate handed down

    layers: list[LayerIndex] = []

    def look(complete: bool) -> dict[str, Found | None]:
        return {**{f: resolve(layers, f, complete, follow=True) for f in folders},
                **{f: resolve(layers, f, complete) for f in files}}

    found = look(False)
    while any(f is None for f in found.values()) and len(layers) < len(descriptors):
        layers.append(cache.index(repository, descriptors[len(layers)], keep))
        found = look(len(layers) == len(descriptors))
    if any(f is None for f in found.values()):
        found = look(True)
    log.debug("%s: read %d of %d layers to find %d paths", image.image, len(layers), len(descriptors), len(found))

    with tempfile.TemporaryDirectory(prefix="apex-native-") as tmp:
        scratch = _Scratch(Path(tmp))
        originals: dict[str, tarfile.TarInfo] = {}
        for wanted, where in found.items():
            assert where is not None
            for link, target in where.links:
                scratch.link(link, target)
            for folder in where.folders:
                scratch.folder(folder)
            info = where.info
            if info is None:
                continue
            if info.isdir():
                scratch.folder(where.path)
            elif (info.isreg() or info.islnk()) and where.layer is not None:
                # A hard link's bytes are its target's (same layer); the new entry is a plain file,
                # as a copy-up in the engine makes it.
                source = clean(info.linkname) if info.islnk() else where.path
                scratch.file(where.path, cache.data(repository, descriptors[where.layer], source), info.mode)
                originals[where.path] = info
            else:
                kind = "symbolic link" if info.issym() else "special file"
                raise BuildError(f"{image.image}: {wanted} is a {kind} in the image; patch changes regular files "
                                 "only", "make the patch name the file the link points to")
        run_patches(scratch.root, image.patches, image.image)
        changes = _changes(scratch, originals, layers)
    if not changes:
        raise BuildError(f"{image.image}: the patches changed no file", "check the patch list")
    replaced = [originals[c.path].mtime for c in changes if c.path in originals]
    mtime = int(max([*replaced, epoch_of(json.loads(config).get("created"))])) + 1
    layer = layer_of(changes, mtime)
    labels = {**dict(image.labels), BASE_DIGEST_LABEL: base_digest, BASE_NAME_LABEL: base_name}
    created_by = "apex-tools patch: " + "; ".join(step.label or step.file.name for step in image.patches)
    new_config = append_config(config, layer, labels, created_by)
    new_manifest = append_manifest(manifest, new_config, layer,
                                   {BASE_DIGEST_LABEL: base_digest, BASE_NAME_LABEL: base_name})
    return Built(image.image, repository, new_manifest, new_config, layer, tuple(sorted(c.path for c in changes)))


def _changes(scratch: _Scratch, originals: Mapping[str, tarfile.TarInfo], layers: Sequence[LayerIndex]) -> list[Change]:
    """What the patches did to the scratch tree, as layer entries (owner and mode of the files replaced)."""
    after = scratch.after()
    changes: dict[str, Change] = {}
    for path, (data, mode) in sorted(after.items()):
        if path in scratch.before and scratch.before[path] == (data, mode):
            continue
        if path in originals:
            info = originals[path]
            kept = info.mode & 0o7777 if mode == scratch.before[path][1] else mode
            changes[path] = Change(path, "file", data, kept, info.uid, info.gid)
        else:
            changes[path] = Change(path, "file", data, mode)
            parent = posixpath.dirname(path)
            while parent and parent not in scratch.folders:
                changes.setdefault(parent, Change(parent, "dir", mode=0o755))
                parent = posixpath.dirname(parent)
    for path in scratch.before:
        if path not in after:
            changes[path] = Change(path, "whiteout")
    for path in [p for p, c in changes.items() if c.kind != "dir"]:
        for stale in stale_bytecode(layers, path):
            changes.setdefault(stale, Change(stale, "whiteout"))
    return list(changes.values())


def push_blobs(client: RegistryClient, repository: str, blobs: Sequence[bytes], holders: Mapping[str, str]) -> int:
    """Make every blob present in ``repository``: mount it from the repository ``holders`` names
    (digest → repository), else upload it unless it is there. Returns how many were uploaded."""
    uploads = 0
    for blob in blobs:
        digest = sha256_digest(blob)
        if holders.get(digest, repository) != repository:
            try:
                location = client.mount_blob(repository, digest, holders[digest])
            except RegistryHTTPError:
                location = client.start_upload(repository)  # a registry refusing mounts: upload instead
            if location is not None:
                client.upload_blob(repository, digest, blob, len(blob), location=location)
                uploads += 1
        elif client.put_blob(repository, digest, blob):
            uploads += 1
    return uploads


def build_all(client: RegistryClient, cache: LayerCache, jobs: int,
              work: Sequence[tuple[str, str, str, NativeImage]]) -> list[Built]:
    """``build_native`` for each (repository, base digest, base name, image), ``jobs`` at a time, in order."""
    with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(work) or 1))) as pool:
        return list(pool.map(lambda item: build_native(client, cache, *item), work))


def push_built(client: RegistryClient, built: Sequence[Built], tags: Mapping[str, Sequence[str]],
               jobs: int = 4) -> tuple[dict[str, str], int]:
    """Push each image's blobs and its manifest under ``tags[image]``, ``jobs`` images at a time.

    Each distinct blob is uploaded once (by the first image holding it) and mounted into the
    other repositories. Returns the digest of the manifest bytes PUT, by image, and the uploads.
    """
    holders: dict[str, str] = {}
    first: list[tuple[Built, list[bytes]]] = []
    for item in built:
        mine = [b for b in (item.layer.blob, item.config) if holders.setdefault(sha256_digest(b), item.repository)
                == item.repository]
        first.append((item, mine))

    def push(item: Built, blobs: Sequence[bytes]) -> int:
        return push_blobs(client, item.repository, blobs, {})

    def rest(item: Built) -> str:
        push_blobs(client, item.repository, [item.layer.blob, item.config], holders)
        digest = ""
        for tag in tags[item.image]:
            digest = client.put_manifest(item.repository, tag, item.manifest)
        return digest

    workers = max(1, min(jobs, len(built) or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        uploads = sum(pool.map(lambda pair: push(*pair), first))
        digests = dict(zip((b.image for b in built), pool.map(rest, built)))
    return digests, uploads
