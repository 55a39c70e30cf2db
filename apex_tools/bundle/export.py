"""Exporting: what a bundle holds (the plan: its manifest, index and where each blob comes from)
and writing it, blob by blob, to a folder or a tar.

Manifests are kept as the registry sent them (``Manifest.raw``), so every digest in the bundle
is upstream's. Each blob is listed once, whichever images share it; a differential bundle
(``--since``) lists under ``base_contents`` what it leaves to the bundle it builds on.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from apex_tools import __version__
from apex_tools.bundle.layout import (
    INDEX_FILE,
    LAYOUT_BYTES,
    LAYOUT_FILE,
    REF_NAME,
    DirWriter,
    TarWriter,
    blob_name,
    dumps,
    sha256_of,
)
from apex_tools.core.reference import ImageRef
from apex_tools.core.state import sha256_file
from apex_tools.registry.client import OCI_INDEX, Manifest, RegistryClient

log = logging.getLogger(__name__)

FORMAT = "apex-bundle/1"
DISK_IMAGE = "disk-image"  # a file of the image cache, image_dir/<os_version>/<path>
WORK_FILE = "work-file"  # a file of the work dir (the patch caches), work_dir/<path>

Opener = Callable[[], contextlib.AbstractContextManager[IO[bytes]]]


@dataclass
class ImageItem:
    """One image of the bundle: its name there, where it came from, its manifests and blobs."""

    ref: str  # <repository>:<tag>, the index's ref.name and the local registry's path
    source: ImageRef
    manifest: Manifest
    children: list[Manifest] = field(default_factory=list)
    blobs: list[tuple[str, int]] = field(default_factory=list)


@dataclass
class FileItem:
    """One file of the bundle, where the importing side puts it, and (disk images) its fetch record."""

    kind: str
    path: str
    source: Path
    digest: str
    size: int
    record: dict[str, Any] | None = None


def bundle_ref(ref: ImageRef) -> str:
    """``<repository>:<tag>`` of an image: its ref.name in index.json."""
    return f"{ref.repository}:{ref.tag}"


def look_image(client: RegistryClient, ref: ImageRef) -> ImageItem:
    """The manifest of ``ref`` (byte-exact), the platform manifests of an index, and their blobs."""
    manifest = client.get_manifest(ref.repository, ref.reference)
    children = [client.get_manifest(ref.repository, c["digest"]) for c in manifest.children()]
    blobs: dict[str, int] = {}
    for each in [*children, manifest]:
        blobs.update((b["digest"], int(b["size"])) for b in each.blobs())
    return ImageItem(bundle_ref(ref), ref, manifest, children, list(blobs.items()))


def look_images(refs: Sequence[ImageRef], client_for: Callable[[str], RegistryClient], jobs: int) -> list[ImageItem]:
    """Every image's manifests, in parallel (one GET each, plus one per platform)."""
    with ThreadPoolExecutor(max_workers=max(1, min(jobs * 2, len(refs) or 1))) as pool:
        return list(pool.map(lambda ref: look_image(client_for(ref.registry), ref), refs))


def file_digest(path: Path) -> str:
    """``sha256:<hex>`` of a file, as the bundle names it."""
    return "sha256:" + sha256_file(path)


@dataclass
class BundlePlan:
    """The bundle to write: its manifest and index (bytes), each blob's size, origin and name."""

    document: dict[str, Any]
    index: bytes
    blobs: list[tuple[str, int]]  # in writing order; only what this bundle holds
    openers: dict[str, Opener]
    names: dict[str, str]  # digest -> the item it belongs to, for messages

    @property
    def bytes(self) -> bytes:
        return dumps(self.document)

    @property
    def id(self) -> str:
        return sha256_of(self.bytes)


def _registry_opener(client: RegistryClient, repository: str, digest: str) -> Opener:
    @contextlib.contextmanager
    def open_blob() -> Iterator[IO[bytes]]:
        with client.open_blob(repository, digest) as response:
            yield response.raw

    return open_blob


def _bytes_opener(data: bytes) -> Opener:
    return lambda: contextlib.nullcontext(io.BytesIO(data))


def plan_bundle(
    images: Sequence[ImageItem],
    files: Sequence[FileItem],
    client_for: Callable[[str], RegistryClient],
    header: dict[str, Any],
    base: tuple[dict[str, Any], str] | None = None,
) -> BundlePlan:
    """Lay out the bundle: blobs (layers and configs, then manifests, then files) each once;
    with ``base`` (its manifest and id) only what the base lacks."""
    images = sorted(images, key=lambda i: i.ref)
    order: dict[str, int] = {}
    openers: dict[str, Opener] = {}
    names: dict[str, str] = {}
    for image in images:
        for digest, size in image.blobs:
            if digest not in order:
                order[digest] = size
                openers[digest] = _registry_opener(client_for(image.source.registry), image.source.repository, digest)
                names[digest] = f"image {image.ref} blob {digest}"
    for image in images:
        for manifest in [*image.children, image.manifest]:
            order.setdefault(manifest.digest, len(manifest.raw))
            openers[manifest.digest] = _bytes_opener(manifest.raw)
            names[manifest.digest] = f"image {image.ref} manifest {manifest.digest}"
    for item in sorted(files, key=lambda f: (f.kind, f.path)):
        if item.digest not in order:
            order[item.digest] = item.size
            source = item.source
            openers[item.digest] = lambda source=source: source.open("rb")
        names.setdefault(item.digest, f"{item.kind} {item.path}")
    index = dumps({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": i.manifest.media_type, "digest": i.manifest.digest, "size": len(i.manifest.raw),
                       "annotations": {REF_NAME: i.ref}} for i in images],
    })
    have: set[str] = set()
    if base is not None:
        old = base[0]
        have = {"sha256:" + name.rsplit("/", 1)[1] for part in ("contents", "base_contents")
                for name in old.get(part, {}) if name.startswith("blobs/")}
    blobs = [(d, s) for d, s in order.items() if d not in have]
    contents = {LAYOUT_FILE: {"sha256": sha256_of(LAYOUT_BYTES), "size": len(LAYOUT_BYTES)},
                INDEX_FILE: {"sha256": sha256_of(index), "size": len(index)}}
    contents.update({blob_name(d): {"sha256": d, "size": s} for d, s in blobs})
    document = {
        **header,
        "format": FORMAT,
        "tool": f"apex-tools {__version__}",
        "base": {"id": base[1], "tool": base[0].get("tool", "")} if base else None,
        "images": [{"ref": i.ref, "source": str(i.source), "digest": i.manifest.digest,
                    "media_type": i.manifest.media_type, "manifests": [c.digest for c in i.children],
                    "blobs": [d for d, _ in i.blobs]} for i in images],
        "files": [{"kind": f.kind, "path": f.path, "digest": f.digest, "size": f.size, "record": f.record}
                  for f in sorted(files, key=lambda f: (f.kind, f.path))],
        "contents": contents,
        "base_contents": {blob_name(d): {"sha256": d, "size": s} for d, s in order.items() if d in have},
    }
    return BundlePlan(document, index, blobs, openers, names)


def missing_blobs(plan: BundlePlan, writer: DirWriter | TarWriter) -> list[tuple[str, int]]:
    """The blobs the destination does not hold yet (all of them for a new tar)."""
    return [(d, s) for d, s in plan.blobs if not writer.has(d, s)]


def run_all(fn: Callable[[Any], Any], items: Sequence[Any], workers: int, name: str) -> list[Any]:
    """``fn`` over ``items`` on ``workers`` threads, results in order; on the first failure (or an
    interruption) what has not started yet is cancelled, so a stopped run stops soon."""
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix=name) as pool:
        futures = [pool.submit(fn, item) for item in items]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def write_bundle(plan: BundlePlan, writer: DirWriter | TarWriter, jobs: int = 4,
                 on_bytes: Callable[[int], None] | None = None) -> tuple[int, int, list[str]]:
    """Write what is missing, then index.json and the bundle manifest; a folder then drops the
    blobs it no longer needs. (blobs written, bytes, digests removed)."""
    if isinstance(writer, TarWriter):
        # Streamable order: the small files first, so a reader knows every digest before any blob.
        writer.meta(LAYOUT_FILE, LAYOUT_BYTES)
        writer.meta("apex-bundle.json", plan.bytes)
        writer.meta(INDEX_FILE, plan.index)
    todo = missing_blobs(plan, writer)

    def one(blob: tuple[str, int]) -> int:
        digest, size = blob
        with plan.openers[digest]() as stream:
            writer.blob(digest, size, stream, plan.names[digest])
        if on_bytes:
            on_bytes(size)
        return size

    if writer.parallel and len(todo) > 1:
        written = sum(run_all(one, todo, jobs * 2, "export"))
    else:
        written = sum(one(b) for b in todo)
    if isinstance(writer, DirWriter):
        writer.meta(LAYOUT_FILE, LAYOUT_BYTES)
        writer.meta(INDEX_FILE, plan.index)
        writer.meta("apex-bundle.json", plan.bytes)  # last: the folder is complete
        return len(todo), written, writer.prune({d for d, _ in plan.blobs})
    return len(todo), written, []
