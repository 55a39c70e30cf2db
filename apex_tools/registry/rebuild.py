"""Rebuild the patched images (``work_dir/containers/<image>/Dockerfile``) as ``:apex``.

Each rebuild also gets a key tag, ``apex-<hash>`` of its base image digest and its build
context, so a re-run with the same inputs finds it in the registry and builds nothing; when
``:apex`` points elsewhere (another patch set ran since) it is re-pointed by a manifest PUT.
All builds run before any push: a failing build pushes nothing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from apex_tools.core.errors import BuildError
from apex_tools.core.reference import ImageRef
from apex_tools.builders import Builder
from apex_tools.registry.client import RegistryClient
from apex_tools.registry.deployment import APEX_TAG

log = logging.getLogger(__name__)

_FROM = re.compile(r"^\s*FROM\s+(?:--platform=\S+\s+)?(\S+)", re.IGNORECASE | re.MULTILINE)

BUILD = "build"
RETAG = "retag"
CURRENT = "up to date"
SKIP = "skip"


@dataclass(frozen=True)
class Rebuild:
    """One image to rebuild: its context, its base (``FROM``), and its ``:apex`` target."""

    image: str
    context: Path
    base: ImageRef
    target: ImageRef


@dataclass(frozen=True)
class RebuildAction:
    """What a rebuild needs: build, retag, nothing, or skip (base not in the local registry)."""

    rebuild: Rebuild
    action: str
    key: ImageRef | None = None
    reason: str = ""


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


def find_rebuilds(containers: Path, local_registry: str, planned: Mapping[str, object] | None = None) -> list[Rebuild]:
    """The images to rebuild, their bases and ``:apex`` refs in the local registry.

    ``planned`` is patch-containers' recorded ``rebuild`` plan (image → details); without a
    record every ``<containers>/<image>/Dockerfile`` counts.
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
        rebuilds.append(Rebuild(dockerfile.parent.name, dockerfile.parent, base, target))
    return rebuilds


def plan_rebuilds(
    rebuilds: Sequence[Rebuild],
    local: RegistryClient,
    base_digests: Callable[[ImageRef], str | None],
) -> list[RebuildAction]:
    """Decide each rebuild from its base digest (known or HEAD) and what the local registry has."""
    actions = []
    for rebuild in rebuilds:
        base_digest = base_digests(rebuild.base)
        if base_digest is None:
            actions.append(RebuildAction(rebuild, SKIP, reason=f"base {rebuild.base} is not in the local registry"))
            continue
        key = rebuild.target.with_tag(key_tag(base_digest, context_digest(rebuild.context)))
        built = local.head_manifest(key.repository, key.tag or "")
        if built is None:
            actions.append(RebuildAction(rebuild, BUILD, key, "new patches or base image"))
            continue
        current = local.head_manifest(rebuild.target.repository, APEX_TAG)
        if current is None or current[0] != built[0]:
            actions.append(RebuildAction(rebuild, RETAG, key, f"{key.tag} exists; :apex points elsewhere"))
        else:
            actions.append(RebuildAction(rebuild, CURRENT, key, f"already built as {key.tag}"))
    return actions


def apply_rebuilds(actions: Sequence[RebuildAction], builder: Builder, local: RegistryClient) -> list[RebuildAction]:
    """Build every BUILD action, then push them all, then re-point RETAG ones; returns those done."""
    to_build = [a for a in actions if a.action == BUILD]
    for action in to_build:
        assert action.key is not None
        log.info("building %s from %s", action.rebuild.target, action.rebuild.context)
        builder.build(action.rebuild.context, [str(action.key), str(action.rebuild.target)])
    for action in to_build:
        builder.push(str(action.key))
        builder.push(str(action.rebuild.target))
    for action in actions:
        if action.action == RETAG and action.key is not None:
            manifest = local.get_manifest(action.key.repository, action.key.tag or "")
            local.put_manifest(action.rebuild.target.repository, APEX_TAG, manifest)
    return [a for a in actions if a.action in (BUILD, RETAG)]
