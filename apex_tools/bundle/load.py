"""Importing: load a bundle into the local registry, the image cache and the work dir, with no
network but loopback, verifying every byte before it is used.

What is already there is skipped by digest (an image whose tag already points at its digest,
a blob the registry holds, a file with the same sha256), so a killed import run again only
does the rest, and a second import does nothing. Each blob is checked while it streams: an
image blob by the registry (which refuses bytes that do not hash to the digest) and by us, a
file through a temporary file renamed into place only when it matches. A blob that fails
fails the items that need it, and nothing of those items is imported (an image's manifest is
only PUT once all its blobs are in).

Given the local registry's storage (``storage.local_storage``: ours, on this machine, seen by
this process), image blobs are written straight into it and linked into their repositories;
else they are uploaded (and mounted) through the registry's API. Manifests always go through
the API, so the registry checks every blob they name.
"""

from __future__ import annotations

import io
import json
import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apex_tools.bundle.export import DISK_IMAGE, file_digest, run_all
from apex_tools.bundle.layout import (
    DirReader,
    Entry,
    HashingReader,
    TarReader,
    blob_name,
    copy_verified,
)
from apex_tools.bundle.storage import RegistryStorage
from apex_tools.core.errors import ApexError, BundleError
from apex_tools.core.state import atomic_file
from apex_tools.http.filecache import Validators, cached_validators, meta_path, write_validators
from apex_tools.registry.client import Manifest, RegistryClient, RegistryHTTPError

log = logging.getLogger(__name__)

LOADED = "imported"
PRESENT = "already there"
FAILED = "failed"


@dataclass
class ImportPlan:
    """What a bundle would change here: images, files, and the blobs to read for them."""

    images: list[dict[str, Any]]  # bundle entries whose tag is not at their digest here
    files: list[dict[str, Any]]  # bundle entries not present here with their digest
    needed: list[tuple[str, int]]  # blobs to read from the bundle, in its order
    home: dict[str, str]  # image blob -> the repository receiving it first
    skipped_images: int = 0
    skipped_files: int = 0
    missing: list[str] = field(default_factory=list)  # blobs needed, in neither bundle nor here

    @property
    def nothing_to_do(self) -> bool:
        return not self.images and not self.files


def _repository(image: dict[str, Any]) -> str:
    return image["ref"].rsplit(":", 1)[0]


def _file_present(entry: dict[str, Any], dest: Path) -> bool:
    if entry["kind"] == DISK_IMAGE:
        cached = cached_validators(dest)
        return cached is not None and cached.digests.get("sha256") == entry["digest"][7:]
    try:
        return dest.stat().st_size == entry["size"] and file_digest(dest) == entry["digest"]
    except FileNotFoundError:
        return False


def plan_import(document: dict[str, Any], local: RegistryClient, dest_of: Callable[[dict[str, Any]], Path],
                jobs: int = 4) -> ImportPlan:
    """HEAD each image's tag (and the blobs of those to load) on the local registry; look at each file."""
    images = document["images"]
    with ThreadPoolExecutor(max_workers=max(1, jobs * 2)) as pool:
        heads = list(pool.map(lambda i: local.head_manifest(_repository(i), i["ref"].rsplit(":", 1)[1]), images))
        todo = [i for i, head in zip(images, heads) if not head or head[0] != i["digest"]]
        home: dict[str, str] = {}
        for image in todo:
            for digest in image["blobs"]:
                home.setdefault(digest, _repository(image))
        there = dict(zip(home, pool.map(lambda d: local.has_blob(home[d], d) is not None, home)))
    files = [f for f in document["files"] if not _file_present(f, dest_of(f))]
    wanted = {d for d, present in there.items() if not present}
    wanted |= {m for i in todo for m in [*i["manifests"], i["digest"]]}
    wanted |= {f["digest"] for f in files}
    sizes = {("sha256:" + name.rsplit("/", 1)[1]): v["size"]
             for part in ("contents", "base_contents") for name, v in document[part].items() if name.startswith("blobs/")}
    held = {name for name in document["contents"] if name.startswith("blobs/")}
    order = [d for d in sizes if d in wanted]
    missing = [d for d in order if blob_name(d) not in held]
    return ImportPlan(todo, files, [(d, sizes[d]) for d in order], home, len(images) - len(todo),
                      len(document["files"]) - len(files), missing)


@dataclass
class Loaded:
    """How one image or file ended."""

    name: str
    status: str
    detail: str = ""
    error: ApexError | None = None


def load_bundle(reader: DirReader | TarReader, plan: ImportPlan, local: RegistryClient,
                dest_of: Callable[[dict[str, Any]], Path], on_bytes: Callable[[int], None] | None = None,
                jobs: int = 4, storage: RegistryStorage | None = None) -> list[Loaded]:
    """Stream the needed blobs into their places (a folder's in parallel, a tar's in its order),
    then mount (or, with ``storage``, link) each image's blobs and PUT its manifests."""
    files_by_digest: dict[str, list[dict[str, Any]]] = {}
    for entry in plan.files:
        files_by_digest.setdefault(entry["digest"], []).append(entry)
    users: dict[str, list[str]] = {}
    for image in plan.images:
        for digest in [*image["blobs"], *image["manifests"], image["digest"]]:
            users.setdefault(digest, []).append(image["ref"])
    manifests: dict[str, bytes] = {}
    broken: dict[str, ApexError] = {}  # blob digest -> why it could not be used
    lock = threading.Lock()

    def take(entry: Entry) -> None:
        digest, size = entry.digest, entry.size
        what = _what(digest, users, files_by_digest)
        try:
            if entry.stream is None:
                raise BundleError(f"{what}: {blob_name(digest)} is not in this bundle",
                                  _base_hint(reader.document))
            if digest in plan.home and storage is not None:
                storage.write_blob(digest, size, entry.stream, what)
                storage.link(plan.home[digest], digest, what)  # as an upload lands in its repository
            elif digest in plan.home:
                _upload(local, plan.home[digest], digest, size, entry.stream, what)
            elif digest in files_by_digest:
                _write_files(files_by_digest[digest], entry.stream, dest_of, what)
            if digest in users and digest not in plan.home:
                body = HashingReader(entry.stream, size)
                data = body.read()
                body.verify(what, digest)
                with lock:
                    manifests[digest] = data
        except ApexError as exc:
            log.error("%s", exc.message)
            with lock:
                broken[digest] = exc
        if on_bytes:
            with lock:
                on_bytes(size)

    def take_blob(blob: tuple[str, int]) -> None:
        assert isinstance(reader, DirReader)
        with reader.entry(*blob) as entry:
            take(entry)

    if reader.parallel:  # a folder: blobs in parallel, largest first
        run_all(take_blob, sorted(plan.needed, key=lambda b: -b[1]), jobs * 2, "import")
    else:  # a tar: in its order, as it streams
        _stream_in_order(reader, plan.needed, take, jobs * 2)
    results = run_all(lambda image: _finish_image(image, local, plan, manifests, broken, storage), plan.images,
                      jobs * 2, "import")
    for entry in plan.files:
        error = broken.get(entry["digest"])
        results.append(Loaded(entry["path"], FAILED if error else LOADED,
                              error.message.splitlines()[0] if error else f"{entry['size']} bytes", error))
    return results


# A tar's small blobs are read ahead into memory and sent by a pool, at most this many bytes
# at once (so memory stays flat in the bundle's size); larger ones stream from the tar.
SMALL_BLOB = 4 << 20
IN_FLIGHT = 16 << 20


def _stream_in_order(reader: DirReader | TarReader, needed: list[tuple[str, int]], take: Callable[[Entry], None],
                     workers: int) -> None:
    """Hand each blob of a sequential reader to ``take``: small ones to a pool (bounded), large inline."""
    pending: deque[tuple[Future[None], int]] = deque()
    held = 0
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="import") as pool:
        try:
            for entry in reader.entries(needed):
                if entry.stream is None or entry.size > SMALL_BLOB:
                    take(entry)
                    continue
                while pending and held + entry.size > IN_FLIGHT:
                    done, size = pending.popleft()
                    done.result()
                    held -= size
                data = io.BytesIO(entry.stream.read(entry.size))
                pending.append((pool.submit(take, Entry(entry.digest, entry.size, data)), entry.size))
                held += entry.size
            for done, _ in pending:
                done.result()
        except BaseException:
            for done, _ in pending:
                done.cancel()
            raise


def _what(digest: str, users: dict[str, list[str]], files: dict[str, list[dict[str, Any]]]) -> str:
    names = [f"image {r}" for r in users.get(digest, [])] + [f"{f['kind']} {f['path']}" for f in files.get(digest, [])]
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return f"{shown} (blob {digest})"


def _base_hint(document: dict[str, Any]) -> str:
    base = document.get("base")
    if base:
        return f"this is a differential bundle: import the bundle it builds on first (id {base['id']})"
    return "the bundle is incomplete: copy it again"


def _upload(local: RegistryClient, repository: str, digest: str, size: int, stream: Any, what: str) -> None:
    body = HashingReader(stream, size)
    try:
        local.upload_blob(repository, digest, body, size)
    except RegistryHTTPError:
        body.verify(what, digest)  # the registry refused a blob that does not hash: say so in our words
        raise
    body.verify(what, digest)


def _write_files(entries: list[dict[str, Any]], stream: Any, dest_of: Callable[[dict[str, Any]], Path],
                 what: str) -> None:
    """The first file streams in verified; equal files are copies of it."""
    first = dest_of(entries[0])
    for n, entry in enumerate(entries):
        dest = dest_of(entry)
        with atomic_file(dest) as out:
            if n == 0:
                copy_verified(stream, entry["size"], out, what, entry["digest"])
            else:
                with first.open("rb") as source:
                    while chunk := source.read(1 << 20):
                        out.write(chunk)
        if entry["kind"] == DISK_IMAGE and entry.get("record"):
            # As fetch-images leaves it: the upstream version's validators, this copy's stat.
            record = {**entry["record"], "digests": {**entry["record"].get("digests", {}),
                                                     "sha256": entry["digest"][7:]}}
            stat = dest.stat()
            write_validators(meta_path(dest), Validators(**{**record, "size": stat.st_size,
                                                            "mtime_ns": stat.st_mtime_ns}))


def _finish_image(image: dict[str, Any], local: RegistryClient, plan: ImportPlan, manifests: dict[str, bytes],
                  broken: dict[str, ApexError], storage: RegistryStorage | None) -> Loaded:
    """Mount (or link) the image's blobs into its repository, then PUT its manifests (platforms first)."""
    ref, repository = image["ref"], _repository(image)
    bad = [broken[d] for d in [*image["blobs"], *image["manifests"], image["digest"]] if d in broken]
    if bad:
        return Loaded(ref, FAILED, bad[0].message.splitlines()[0], bad[0])
    try:
        for digest in image["blobs"]:
            home = plan.home[digest]
            if storage is not None:
                storage.link(repository, digest, f"image {ref}")
            elif home != repository and local.mount_blob(repository, digest, home) is not None:
                raise BundleError(f"image {ref}: the registry would not mount {digest} from {home}",
                                  "check the local registry's log")
        # Each manifest with the media type its parent names it by (the index.json's for the top).
        types = {d["digest"]: d["mediaType"] for d in json.loads(manifests[image["digest"]]).get("manifests", [])}
        for digest in image["manifests"]:
            local.put_manifest(repository, digest, Manifest(types[digest], digest, manifests[digest]))
        local.put_manifest(repository, ref.rsplit(":", 1)[1],
                           Manifest(image["media_type"], image["digest"], manifests[image["digest"]]))
    except ApexError as exc:
        return Loaded(ref, FAILED, exc.message.splitlines()[0], exc)
    return Loaded(ref, LOADED, f"{image['digest'][:19]}, {len(image['blobs'])} blobs")

