"""push-registry's trust step: sign every image ``docker-images.yaml`` names, attach the rebuilt
images' SLSA statements, and write the ``images`` section of provenance.json.

Every fact comes from the run itself: the mirrored digests from the copies (the bytes PUT, or
the digest found equal on both sides), the rebuilt ones from their pushes, the bases and
patches from patch-containers' record and the build contexts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apex_tools.core.reference import ImageRef
from apex_tools.registry.client import RegistryClient
from apex_tools.trust.keys import SigningKey
from apex_tools.trust.provenance import attach, patch_dependency, statement, update_provenance, write_statement
from apex_tools.trust.sigstore import SIGNED, Signed, attachment_tag, sign_image


@dataclass(frozen=True)
class ImageFacts:
    """One image the deployment runs, as provenance records it."""

    name: str
    parameters: tuple[str, ...]
    upstream: str
    upstream_digest: str | None
    local: ImageRef  # as the nodes name it (the files' registry address)
    digest: str
    rebuild: Mapping[str, Any] | None = None  # push-registry's record: base, base_digest, builder, patches


@dataclass
class TrustOutcome:
    """What the step did: signatures made and already there, statements attached, files written."""

    signed: int = 0
    already_signed: int = 0
    attached: int = 0
    changes: list[str] = field(default_factory=list)
    # ``repository@digest`` of each image signed → its signature manifest's digest in the registry.
    signatures: dict[str, str] = field(default_factory=dict)


def _patches(rebuild: Mapping[str, Any], gerrit_url: str) -> list[dict[str, Any]]:
    """Each patch of a rebuild with its file's sha256 and the resource descriptor of it."""
    out = []
    context = Path(str(rebuild.get("context", "")))
    for patch in rebuild.get("patches") or []:
        # push-registry's record has the patch file's sha256; else hash the file in the context.
        sha = str(patch.get("sha256") or "").removeprefix("sha256:")
        path = context / str(patch.get("file", ""))
        if not sha and path.is_file():
            sha = hashlib.sha256(path.read_bytes()).hexdigest()
        out.append({**patch, "sha256": sha, "dependency": patch_dependency(patch, sha, gerrit_url)})
    return out


def _entry(facts: ImageFacts, key: SigningKey | None, gerrit_url: str) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": facts.name,
        "parameters": list(facts.parameters),
        "upstream": {"ref": facts.upstream, "digest": facts.upstream_digest},
        "local": {"ref": str(facts.local), "digest": facts.digest},
        "signature": {"key_id": key.key_id, "tag": attachment_tag(facts.digest)} if key else None,
        "rebuild": None,
    }
    if facts.rebuild is not None:
        rebuild = facts.rebuild
        entry["rebuild"] = {
            "base": {"ref": rebuild["base"], "digest": rebuild["base_digest"]},
            "builder": rebuild["builder"],
            "patches": [{k: v for k, v in p.items() if k != "dependency"} for p in _patches(rebuild, gerrit_url)],
            "statement": f"provenance/{facts.name}.intoto.json",
        }
    return entry


def trust_images(
    work_dir: Path,
    reach: Callable[[ImageRef], tuple[RegistryClient, ImageRef]],
    images: Sequence[ImageFacts],
    key: SigningKey | None,
    parameters: Mapping[str, Any],
    gerrit_url: str,
    jobs: int = 4,
    signed_before: Mapping[str, Signed] | None = None,
) -> TrustOutcome:
    """Sign (with ``key``; None: signing is off), attach statements, write provenance.json.

    ``reach`` gives the client that reaches an image's registry and the reference to use there
    (the registry may be reached through a forward under another address). ``signed_before``:
    images this run signed already, by name (``str(ImageRef)``), counted as if signed here.
    """
    signed_before = signed_before or {}
    outcome = TrustOutcome()
    by_ref = {str(i.local): i for i in images}  # one image may fill several parameters

    def one(facts: ImageFacts) -> tuple[Signed | None, bool]:
        client, there = reach(facts.local)
        before = signed_before.get(str(facts.local))
        if before is not None and before.digest == facts.digest:
            signed: Signed | None = before
        else:
            signed = sign_image(client, facts.local, facts.digest, key) if key else None
        attached = False
        if facts.rebuild is not None:
            rebuild = facts.rebuild
            deps = [p["dependency"] for p in _patches(rebuild, gerrit_url)]
            data = statement(f"{facts.local.registry}/{facts.local.repository}", facts.digest, rebuild["base"],
                             rebuild["base_digest"], deps,
                             {**parameters, "image": facts.name, "builder": rebuild["builder"]})
            raw = write_statement(work_dir, facts.name, data, key)
            subject = client.get_manifest(there.repository, facts.digest)
            attached = attach(client, there.repository, subject, raw)
        return signed, attached

    # Each image is a handful of small requests, mostly waiting on the registry: twice ``jobs`` at a time.
    with ThreadPoolExecutor(max_workers=max(1, jobs * 2)) as pool:
        done = list(pool.map(one, by_ref.values()))
    outcome.signed = sum(1 for s, _ in done if s is not None and s.status == SIGNED)
    outcome.already_signed = len(done) - outcome.signed if key else 0
    outcome.signatures = {f"{facts.local.repository}@{facts.digest}": s.signature
                          for facts, (s, _) in zip(by_ref.values(), done) if s is not None}
    outcome.attached = sum(1 for _, a in done if a)
    if key and outcome.signed:
        outcome.changes.append(f"signed {outcome.signed} images ({outcome.already_signed} already signed)")
    if outcome.attached:
        outcome.changes.append(f"attached {outcome.attached} SLSA provenance statements (referrers tag scheme)")
    section = sorted((_entry(i, key, gerrit_url) for i in images), key=lambda e: e["name"])
    if update_provenance(work_dir, "images", section):
        outcome.changes.append("wrote provenance.json")
    return outcome
