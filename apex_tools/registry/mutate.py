"""Image mutation as data (no I/O): the merged view of layers read top-down, one appended layer,
its config and manifest, all as reproducible bytes.

The model half of the native builder (``registry/native.py`` is the transport), after
go-containerregistry's ``mutate`` and the OCI layer spec (``image-spec/layer.md``):

* layers are read top-down; the first layer holding a path (entry or whiteout, or an opaque
  marker or whiteout on a parent) decides it, so reading stops once every wanted path is
  decided;
* symbolic links on the way to a path are followed in the merged view (kolla's
  ``venv/lib/python3 -> python3.N``), so a patched file is written at its real path;
* the new layer is a sorted PAX tar, numeric owners only, one mtime for every entry, gzip with
  header time 0 and a fixed level; diff_id and history are appended to the config and the base's
  manifest family (Docker v2 schema 2 or OCI) is kept.
"""

from __future__ import annotations

import gzip
import io
import json
import posixpath
import tarfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import IO, Any

from apex_tools.core.errors import BuildError
from apex_tools.patching.apply import clean
from apex_tools.registry.client import DOCKER_MANIFEST, Manifest, sha256_digest

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
GZIP_LEVEL = 6
MAX_LINKS = 40
BASE_DIGEST_LABEL = "org.opencontainers.image.base.digest"
BASE_NAME_LABEL = "org.opencontainers.image.base.name"


@dataclass
class LayerIndex:
    """One layer: every entry's header by path, its whiteouts, its opaque folders, the file bytes kept."""

    entries: dict[str, tarfile.TarInfo] = field(default_factory=dict)
    whiteouts: set[str] = field(default_factory=set)
    opaque: set[str] = field(default_factory=set)
    data: dict[str, bytes] = field(default_factory=dict)

    def hides(self, path: str) -> bool:
        """True when this layer deletes ``path`` from the layers below (whiteout or opaque parent)."""
        if path in self.whiteouts:
            return True
        parent = posixpath.dirname(path)
        while True:
            if parent in self.opaque or parent in self.whiteouts:
                return True
            if not parent:
                return False
            parent = posixpath.dirname(parent)


def index_layer(stream: IO[bytes], keep: Callable[[str], bool]) -> LayerIndex:
    """Read a (gzipped) layer tar stream once; keep the bytes of the regular files ``keep`` accepts."""
    index = LayerIndex()
    with tarfile.open(fileobj=stream, mode="r|*") as tar:
        for info in tar:
            path = clean(info.name)
            base, parent = posixpath.basename(path), posixpath.dirname(path)
            if base == OPAQUE:
                index.opaque.add(parent)
            elif base.startswith(WHITEOUT):
                index.whiteouts.add(posixpath.join(parent, base[len(WHITEOUT):]))
            else:
                index.entries[path] = info
                if info.isreg() and keep(path):
                    handle = tar.extractfile(info)
                    index.data[path] = handle.read() if handle else b""
    return index


@dataclass(frozen=True)
class Found:
    """Where the merged view puts a path: its real path (links followed), its holder (top-down
    layer number) and header, the links followed and the parent folders the image lacks."""

    path: str
    layer: int | None = None
    info: tarfile.TarInfo | None = None
    links: tuple[tuple[str, str], ...] = ()
    missing: tuple[str, ...] = ()
    folders: tuple[str, ...] = ()

    @property
    def exists(self) -> bool:
        return self.info is not None


def _lookup(layers: Sequence[LayerIndex], path: str) -> tuple[str, int, tarfile.TarInfo | None]:
    """("found", n, header) | ("absent", n, None) | ("unknown", -1, None) over the layers read so far."""
    for n, layer in enumerate(layers):
        if path in layer.entries:
            return "found", n, layer.entries[path]
        if layer.hides(path):
            return "absent", n, None
    return "unknown", -1, None


def _link_target(link: str, target: str) -> str:
    joined = target if target.startswith("/") else posixpath.join(posixpath.dirname(link), target)
    return clean(joined)


def resolve(layers: Sequence[LayerIndex], path: str, complete: bool, follow: bool = False) -> Found | None:
    """``path`` in the merged view of ``layers`` (top-down); None when a deeper layer must be read.

    ``complete``: every layer is read, so what no layer holds is absent. Links are followed on
    the parents, and on the path itself only with ``follow`` (a folder to ``cd`` into): patch
    refuses to write through a link, in the image as here.
    """
    parts = [p for p in clean(path).split("/") if p]
    links: list[tuple[str, str]] = []
    folders: list[str] = []
    current, i = "", 0
    while i < len(parts):
        candidate = posixpath.join(current, parts[i])
        state, n, info = _lookup(layers, candidate)
        if state == "unknown" and not complete:
            return None
        last = i == len(parts) - 1
        if info is None:
            rest = parts[i:]
            missing = tuple(posixpath.join(current, *rest[:k]) for k in range(1, len(rest)))
            return Found(posixpath.join(current, *rest), links=tuple(links), missing=missing, folders=tuple(folders))
        if last and not (follow and info.issym()):
            return Found(candidate, n, info, tuple(links), folders=tuple(folders))
        if info.issym():
            links.append((candidate, info.linkname))
            if len(links) > MAX_LINKS:
                raise BuildError(f"{path}: more than {MAX_LINKS} symbolic links on the way (a loop?)",
                                 "check the image's links")
            parts = [p for p in _link_target(candidate, info.linkname).split("/") if p] + parts[i + 1:]
            current, i = "", 0
            continue
        if not info.isdir():
            raise BuildError(f"{path}: {candidate} is not a folder in the image", "check the patch's paths")
        folders.append(candidate)
        current, i = candidate, i + 1
    return Found(current, folders=tuple(folders))


def stale_bytecode(layers: Sequence[LayerIndex], source: str) -> list[str]:
    """Compiled files of ``source`` (``X.pyc``/``X.pyo`` beside it, ``__pycache__/X.*.pyc``) the read
    layers show: the new layer whites them out so no bytecode of the old source can run."""
    if not source.endswith(".py"):
        return []
    folder, stem = posixpath.dirname(source), posixpath.basename(source)[:-3]
    beside = {posixpath.join(folder, stem + ext) for ext in (".pyc", ".pyo")}
    cache = posixpath.join(folder, "__pycache__", stem + ".")
    candidates = sorted({p for layer in layers for p in layer.entries
                         if p in beside or (p.startswith(cache) and p.endswith((".pyc", ".pyo")))})
    return [p for p in candidates if _lookup(layers, p)[0] == "found"]


@dataclass(frozen=True)
class Change:
    """One entry of the new layer: a file (bytes, mode, owner), a new folder, or a whiteout."""

    path: str
    kind: str  # "file" | "dir" | "whiteout"
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0

    @property
    def name(self) -> str:
        if self.kind == "whiteout":
            return posixpath.join(posixpath.dirname(self.path), WHITEOUT + posixpath.basename(self.path))
        return self.path


@dataclass(frozen=True)
class NewLayer:
    """The appended layer: its gzip blob, the digest of its tar (diff_id) and its mtime."""

    blob: bytes
    diff_id: str
    mtime: int

    @property
    def digest(self) -> str:
        return sha256_digest(self.blob)


def layer_of(changes: Sequence[Change], mtime: int) -> NewLayer:
    """A reproducible layer: entries sorted by name, PAX, numeric owners, one mtime, pinned gzip."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for change in sorted(changes, key=lambda c: c.name):
            info = tarfile.TarInfo(change.name)
            info.mtime, info.uid, info.gid, info.uname, info.gname = mtime, change.uid, change.gid, "", ""
            if change.kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, change.mode
                tar.addfile(info)
            else:
                info.mode = change.mode if change.kind == "file" else 0o644
                info.size = len(change.data)
                tar.addfile(info, io.BytesIO(change.data))
    data = raw.getvalue()
    return NewLayer(gzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0), sha256_digest(data), mtime)


def rfc3339(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def epoch_of(created: object) -> int:
    """A config's ``created`` as whole seconds (0 when absent or unreadable)."""
    if not isinstance(created, str) or not created:
        return 0
    text = created.rstrip("Z").split(".")[0]
    try:
        return int(datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp())
    except ValueError:
        return 0


def append_config(base: bytes, layer: NewLayer, labels: Mapping[str, str], created_by: str) -> bytes:
    """The base config with the layer's diff_id and a history entry appended, labels added, ``created``
    set to the layer's mtime; everything else (``User``, ``Env``, ``Cmd``, ...) unchanged."""
    config: dict[str, Any] = json.loads(base)
    config.setdefault("rootfs", {"type": "layers", "diff_ids": []}).setdefault("diff_ids", []).append(layer.diff_id)
    created = rfc3339(layer.mtime)
    config["created"] = created
    if config.get("history"):
        # A history entry per layer keeps tools that pair them (Quay, docker history) right.
        config["history"].append({"created": created, "created_by": created_by, "comment": "apex-tools native builder"})
    inner = config.setdefault("config", {})
    inner["Labels"] = {**(inner.get("Labels") or {}), **labels}
    return json.dumps(config, sort_keys=True, separators=(",", ":")).encode()


def append_manifest(base: Manifest, config: bytes, layer: NewLayer, annotations: Mapping[str, str]) -> Manifest:
    """The base manifest (same family and media types) with the new config and the layer appended.

    Docker v2 schema 2 has no annotations field, so ``annotations`` go only into OCI manifests.
    """
    data: dict[str, Any] = base.json()
    docker = base.media_type == DOCKER_MANIFEST
    data["config"] = {**data["config"], "size": len(config), "digest": sha256_digest(config)}
    data["layers"] = [*data.get("layers", []), {"mediaType": DOCKER_LAYER if docker else OCI_LAYER,
                                                 "size": len(layer.blob), "digest": layer.digest}]
    if not docker and annotations:
        data["annotations"] = {**(data.get("annotations") or {}), **annotations}
    raw = json.dumps(data, indent=3).encode()
    return Manifest(base.media_type, sha256_digest(raw), raw)
