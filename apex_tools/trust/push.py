"""The trust step as push-registry calls it: from what the run pushed to signatures, statements,
the policy files and provenance.json (a few lines in the target, the rest here)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from apex_tools.core.config import Options
from apex_tools.core.reference import ImageRef
from apex_tools.core.run import RunContext
from apex_tools.core.workdir import PATCH_CONTAINERS
from apex_tools.registry.client import RegistryClient
from apex_tools.registry.deployment import DeploymentImage
from apex_tools.registry.mirror import CopyResult
from apex_tools.trust.keys import ensure_key, key_id_of
from apex_tools.trust.policy import write_policy
from apex_tools.trust.sigstore import attachment_tag

OFF = "off"


def signing_state(options: Options, remember: bool = False) -> str | None:
    """What push-registry's fingerprint holds of signing: "off", the key's id, or None (to generate).

    ``remember``: a real run's check may note the key's id (``keys.key_id_of``).
    """
    if not options.signing.enabled:
        return OFF
    return key_id_of(options.work_dir, options.signing.key, remember)


def trust_plan(signing: str | None) -> str:
    """push-registry's plan line for the trust step, from ``signing_state``."""
    if signing == OFF:
        return "write provenance.json (signing is off)"
    key = "a key generated now" if signing is None else f"key {signing[:19]}"
    return f"sign the images docker-images.yaml names ({key}), attach the rebuilds' SLSA statements, " \
           "write policy.json, registries.d/ and provenance.json"


def trust_step(
    run: RunContext,
    local: RegistryClient,
    named: str,
    images: Sequence[tuple[DeploymentImage, str | None]],
    results: Sequence[CopyResult],
    rebuilds: Mapping[str, Mapping[str, Any]],
) -> tuple[list[str], dict[str, str]]:
    """Sign every image of the parameter file, attach the rebuilds' statements, write the policy
    files and provenance.json; the one-line changes.

    ``images``: each deployment image with its upstream digest; ``results``: the copies (their
    digests are the bytes PUT, or the digest found equal on both sides); ``rebuilds``:
    push-registry's record of each rebuilt image (its ``:apex`` digest from the push, base and
    its digest, builder, patches). ``local`` reaches the registry the files call ``named``.
    """
    # Here, not at the top: a run with nothing to do never signs (and never pays for the import).
    from apex_tools.trust.images import ImageFacts, trust_images

    options = run.options
    work = options.work_dir
    changes: list[str] = []
    key = None
    if options.signing.enabled:
        key, generated = ensure_key(work, options.signing.key)
        if generated:
            changes.append("generated the signing key (signing/signing.key, mode 0600; signing.pub beside it)")
        written = write_policy(work, named)
        if written:
            changes.append(f"wrote {', '.join(written)} (signatures required on {named})")
    copied = {str(r.job.target): r.digest for r in results}
    record = run.state.load(PATCH_CONTAINERS)
    planned = (record.data.get("rebuild") if record is not None else None) or {}
    facts = []
    for image, upstream in images:
        rebuild = rebuilds.get(image.name)
        if not rebuild or not rebuild.get("digest"):
            facts.append(ImageFacts(image.name, image.parameters, str(image.source), upstream,
                                    image.target.with_registry(named), copied[str(image.target)]))
            continue
        context = (planned.get(image.name) or {}).get("context") or ""
        facts.append(ImageFacts(image.name, image.parameters, str(image.source), upstream,
                                ImageRef.parse(str(rebuild["ref"])), str(rebuild["digest"]),
                                {**rebuild, "context": context}))

    def reach(ref: ImageRef) -> tuple[RegistryClient, ImageRef]:
        return local, ref.with_registry(local.host)

    parameters = {"deploy_settings": options.deploy_settings, "os_version": run.os_version}
    outcome = trust_images(work, reach, facts, key, parameters, options.gerrit.url, options.jobs)
    return changes + outcome.changes, outcome.signatures


def signed_subjects(images: Sequence[DeploymentImage], results: Sequence[CopyResult],
                    rebuilds: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """``repository@digest`` of every image ``trust_step`` signs (a rebuilt one under its ``:apex`` name)."""
    copied = {str(r.job.target): r.digest for r in results}
    out = set()
    for image in images:
        rebuild = rebuilds.get(image.name)
        if rebuild and rebuild.get("digest"):
            out.add(f"{ImageRef.parse(str(rebuild['ref'])).repository}@{rebuild['digest']}")
        elif copied.get(str(image.target)):
            out.add(f"{image.target.repository}@{copied[str(image.target)]}")
    return sorted(out)


def signature_digests(local: RegistryClient, subjects: Sequence[str], jobs: int,
                      known: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """``repository@digest`` → the digest of its signature attachment (None: none), one HEAD each, in parallel.

    A re-run compares these with what the last run recorded: a signature deleted or replaced
    (another key) is noticed without reading or verifying any signature. ``known``: digests this
    run just wrote or read (the signing's own answers), not asked again.
    """
    known = known or {}

    def head(subject: str) -> str | None:
        if subject in known:
            return known[subject]
        repository, digest = subject.split("@", 1)
        found = local.head_manifest(repository, attachment_tag(digest))
        return found[0] if found else None

    with ThreadPoolExecutor(max_workers=max(1, min(jobs * 2, len(subjects) or 1))) as pool:
        return dict(zip(subjects, pool.map(head, subjects)))
