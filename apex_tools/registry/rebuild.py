"""Rebuild the patched images (``work_dir/containers/<image>/``) as ``:apex``.

Each rebuild also gets a key tag, ``apex-<hash>`` of its base image digest and its build
context (and, for the native builder, its format version), so a re-run with the same inputs
finds it in the registry and builds nothing; when ``:apex`` points elsewhere (another patch set
ran since) it is re-pointed by a manifest PUT. Builders: ``native`` (``registry/native.py``: one
layer appended over the registry API, from patch-containers' record) for images that only need
patches; an engine (``docker``/``buildah``, ``builder_fallback``) for the others. All builds run
before any push: a failing build pushes nothing. An engine that cannot be reached fails only the
images that need it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from apex_tools.builders import Builder
from apex_tools.builders.base import EngineUnavailable
from apex_tools.core.errors import BuildError
from apex_tools.core.reference import ImageRef
from apex_tools.patching.apply import PatchStep
from apex_tools.registry.client import RegistryClient
from apex_tools.registry.deployment import APEX_TAG
from apex_tools.registry.native import LayerCache, NativeImage, build_all, push_built

log = logging.getLogger(__name__)

_FROM = re.compile(r"^\s*FROM\s+(?:--platform=\S+\s+)?(\S+)", re.IGNORECASE | re.MULTILINE)

BUILD = "build"
RETAG = "retag"
CURRENT = "up to date"
SKIP = "skip"
NATIVE = "native"
# Bumped when the native builder would write other bytes for the same inputs (new key tags).
NATIVE_FORMAT = "native-1"


@dataclass(frozen=True)
class Rebuild:
    """One image to rebuild: its context, base (``FROM``), ``:apex`` target, upstream name and patches.

    ``native`` holds the native builder's inputs; None with ``engine_only`` saying why an engine
    is needed. ``patches`` are the patch identities for the record.
    """

    image: str
    context: Path
    base: ImageRef
    target: ImageRef
    source: str = ""
    native: NativeImage | None = None
    engine_only: str = ""
    patches: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class RebuildAction:
    """What a rebuild needs: build, retag, nothing, or skip (base not in the local registry).

    ``builder`` is the one that builds it; ``digest`` the ``:apex`` manifest digest, once known
    (from the push for a build, from the key tag otherwise).
    """

    rebuild: Rebuild
    action: str
    key: ImageRef | None = None
    reason: str = ""
    builder: str = ""
    base_digest: str = ""
    digest: str = ""


@dataclass
class RebuildReport:
    """What ``apply_rebuilds`` did: the actions done (digests filled), those failed and why, the I/O."""

    done: list[RebuildAction] = field(default_factory=list)
    failed: list[tuple[RebuildAction, str]] = field(default_factory=list)
    bytes_read: int = 0
    layers_read: int = 0
    uploads: int = 0


def context_digest(context: Path) -> str:
    """A sha256 over the build context: relative paths, executable bits and contents, sorted."""
    digest = hashlib.sha256()
    for path in sorted(p for p in context.rglob("*") if p.is_file()):
        rel = path.relative_to(context).as_posix()
        digest.update(f"{rel}\0{os.access(path, os.X_OK):d}\0{path.stat().st_size}\0".encode())
        digest.update(path.read_bytes())
    return "sha256:" + digest.hexdigest()


def key_tag(base_digest: str, context: str) -> str:
    """``apex-<16 hex>`` naming one (base image, patch set) pair."""
    return "apex-" + hashlib.sha256(f"{base_digest}\n{context}".encode()).hexdigest()[:16]


def file_sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def _from_record(image: str, context: Path, details: Mapping[str, Any]) -> tuple[NativeImage | None, str, tuple]:
    """The native inputs of a planned image (or why it needs an engine) and its patch identities."""
    patches = details.get("patches") or []
    # Gerrit's patch set number and commit, when patch-containers recorded them (a local file has none).
    identities = tuple({"project": p.get("project", ""), "change_id": p.get("change_id", ""),
                        "revision": p.get("revision", ""),
                        **{k: p[k] for k in ("patch_set", "commit") if p.get(k)}, "file": p.get("file", ""),
                        "sha256": file_sha256(context / p["file"]) if (context / p.get("file", "")).is_file() else ""}
                       for p in patches)
    if details.get("engine_only") or details.get("opendaylight"):
        return None, details.get("engine_only") or f"reinstalls OpenDaylight {details['opendaylight']}", identities
    if "labels" not in details or any("strip" not in p for p in patches):
        return None, "patch-containers' record predates the native builder (re-run patch-containers)", identities
    steps = tuple(PatchStep(context / p["file"], p["target_dir"], int(p["strip"]), p.get("label", ""))
                  for p in patches)
    labels = tuple((str(k), str(v)) for k, v in details["labels"])
    return NativeImage(image, steps, labels), "", identities


def find_rebuilds(containers: Path, local_registry: str, planned: Mapping[str, object] | None = None) -> list[Rebuild]:
    """The images to rebuild, their bases and ``:apex`` refs in the local registry.

    ``planned`` is patch-containers' recorded ``rebuild`` plan (image → details); without a
    record every ``<containers>/<image>/Dockerfile`` counts, built by an engine.
    """
    if planned is None:
        dockerfiles = sorted(containers.glob("*/Dockerfile"))
    else:
        dockerfiles = [containers / image / "Dockerfile" for image in sorted(planned)]
    rebuilds = []
    for dockerfile in dockerfiles:
        try:
            match = _FROM.search(dockerfile.read_text())
        except FileNotFoundError:
            raise BuildError(f"{dockerfile}: missing, though patch-containers planned it",
                             "re-run patch-containers (with --force) to regenerate it") from None
        if not match:
            raise BuildError(f"{dockerfile}: no FROM line", "re-run patch-containers to regenerate it")
        base = ImageRef.parse(match.group(1))
        target = ImageRef(local_registry, base.repository, APEX_TAG)
        image, context = dockerfile.parent.name, dockerfile.parent
        details = planned.get(image) if planned is not None else None
        if isinstance(details, Mapping):
            native, why, identities = _from_record(image, context, details)
            rebuilds.append(Rebuild(image, context, base, target, str(details.get("upstream", "")), native, why,
                                    identities))
        else:
            rebuilds.append(Rebuild(image, context, base, target, engine_only="no patch-containers record for it"))
    return rebuilds


def builder_for(rebuild: Rebuild, builder: str, fallback: str) -> str:
    """The builder an image gets: native when configured and its patches are all it needs, else an engine."""
    if builder != NATIVE:
        return builder
    return NATIVE if rebuild.native is not None else fallback


def describe_builder(action: RebuildAction) -> str:
    """``native``, or the engine and why the image needs one (for plans)."""
    if action.builder != NATIVE and action.rebuild.engine_only:
        return f"{action.builder}: {action.rebuild.engine_only}"
    return action.builder


def plan_rebuilds(
    rebuilds: Sequence[Rebuild],
    local: RegistryClient,
    base_digests: Callable[[ImageRef], str | None],
    builder: str = NATIVE,
    fallback: str = "docker",
) -> list[RebuildAction]:
    """Decide each rebuild from its base digest (known or HEAD) and what the local registry has
    (the rebuilds in parallel: each is a few HEADs)."""

    def decide(rebuild: Rebuild) -> RebuildAction:
        using = builder_for(rebuild, builder, fallback)
        base_digest = base_digests(rebuild.base)
        if base_digest is None:
            return RebuildAction(rebuild, SKIP, reason=f"base {rebuild.base} is not in the local registry",
                                 builder=using)
        context = context_digest(rebuild.context) + (f"\n{NATIVE_FORMAT}" if using == NATIVE else "")
        key = rebuild.target.with_tag(key_tag(base_digest, context))
        found = dict(builder=using, base_digest=base_digest)
        built = local.head_manifest(key.repository, key.tag or "")
        if built is None:
            return RebuildAction(rebuild, BUILD, key, "new patches or base image", **found)
        current = local.head_manifest(rebuild.target.repository, APEX_TAG)
        if current is None or current[0] != built[0]:
            return RebuildAction(rebuild, RETAG, key, f"{key.tag} exists; :apex points elsewhere",
                                 digest=built[0], **found)
        return RebuildAction(rebuild, CURRENT, key, f"already built as {key.tag}", digest=built[0], **found)

    with ThreadPoolExecutor(max_workers=max(1, min(8, len(rebuilds)))) as pool:
        return list(pool.map(decide, rebuilds))


def apply_rebuilds(actions: Sequence[RebuildAction], local: RegistryClient,
                   engine: Callable[[str], Builder], jobs: int = 4) -> RebuildReport:
    """Build every BUILD action (native ones in memory), then push them all, then re-point RETAG ones.

    A build error raises before anything is pushed; an engine that cannot be reached fails only
    its images (in ``failed``) and the others go on.
    """
    report = RebuildReport()
    to_build = [a for a in actions if a.action == BUILD]
    cache = LayerCache(local)
    natives = [a for a in to_build if a.builder == NATIVE]
    for action in natives:
        log.info("building %s natively from %s@%s", action.rebuild.target, action.rebuild.base.repository,
                 action.base_digest)
    made = build_all(local, cache, jobs, [(a.rebuild.base.repository, a.base_digest, a.rebuild.source or
                                           str(a.rebuild.base), a.rebuild.native) for a in natives
                                          if a.rebuild.native is not None])
    built = list(zip(natives, made))
    engine_built: list[tuple[RebuildAction, Builder]] = []
    for action in (a for a in to_build if a.builder != NATIVE):
        assert action.key is not None
        try:
            builder = engine(action.builder)
            log.info("building %s from %s with %s", action.rebuild.target, action.rebuild.context, action.builder)
            builder.build(action.rebuild.context, [str(action.key), str(action.rebuild.target)])
        except EngineUnavailable as exc:
            report.failed.append((action, f"{exc.message} ({action.rebuild.engine_only or 'builder: ' + action.builder}"
                                          "; the native builder cannot do it)"))
            continue
        engine_built.append((action, builder))
    report.bytes_read, report.layers_read = cache.bytes_read, cache.layers_read

    if built:
        tags = {b.image: [str(a.key.tag), APEX_TAG] for a, b in built if a.key is not None}
        digests, report.uploads = push_built(local, [b for _, b in built], tags, jobs)
        report.done += [replace(a, digest=digests[b.image]) for a, b in built]
    for action, builder in engine_built:
        builder.push(str(action.key))
        report.done.append(replace(action, digest=builder.push(str(action.rebuild.target))))
    for action in actions:
        if action.action == RETAG and action.key is not None:
            manifest = local.get_manifest(action.key.repository, action.key.tag or "")
            report.done.append(replace(action, digest=local.put_manifest(action.rebuild.target.repository, APEX_TAG,
                                                                        manifest)))
    return report
