"""The trust step as push-registry calls it: from what the run pushed to signatures, statements,
the policy files and provenance.json (a few lines in the target, the rest here)."""

from __future__ import annotations

from collections.abc import Sequence

from apex_tools.core.config import Options
from apex_tools.core.reference import ImageRef
from apex_tools.core.run import RunContext
from apex_tools.core.workdir import PATCH_CONTAINERS
from apex_tools.registry.client import RegistryClient
from apex_tools.registry.deployment import APEX_TAG, DeploymentImage
from apex_tools.registry.mirror import CopyResult
from apex_tools.registry.rebuild import RebuildAction
from apex_tools.trust.images import ImageFacts, trust_images
from apex_tools.trust.keys import ensure_key, key_id_of
from apex_tools.trust.policy import write_policy

OFF = "off"


def signing_state(options: Options) -> str | None:
    """What push-registry's fingerprint holds of signing: "off", the key's id, or None (to generate)."""
    if not options.signing.enabled:
        return OFF
    return key_id_of(options.work_dir, options.signing.key)


def trust_step(
    run: RunContext,
    local: RegistryClient,
    named: str,
    images: Sequence[tuple[DeploymentImage, str | None]],
    results: Sequence[CopyResult],
    rebuilds: Sequence[tuple[RebuildAction, str | None]],
) -> list[str]:
    """Sign every image of the parameter file, attach the rebuilds' statements, write the policy
    files and provenance.json; the one-line changes.

    ``images``: each deployment image with its upstream digest; ``results``: the copies (their
    digests are the bytes PUT, or the digest found equal on both sides); ``rebuilds``: each
    rebuild done or current with its base digest. ``local`` reaches the registry the files
    call ``named``.
    """
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
    by_image = {action.rebuild.image: (action, base) for action, base in rebuilds}
    facts = []
    for image, upstream in images:
        done = by_image.get(image.name)
        if done is None or done[1] is None or done[0].key is None:
            facts.append(ImageFacts(image.name, image.parameters, str(image.source), upstream,
                                    image.target.with_registry(named), copied[str(image.target)]))
            continue
        action, base = done
        # The key tag was pushed by this rebuild and names its inputs alone: its digest is the
        # :apex result's (issue 17's record will hand the push's own digest).
        key_tag = action.key
        found = local.head_manifest(key_tag.repository, key_tag.tag or "")
        digest = found[0] if found else ""
        facts.append(ImageFacts(
            image.name, image.parameters, str(image.source), upstream,
            image.target.with_registry(named).with_tag(APEX_TAG), digest,
            {"base": str(action.rebuild.base.with_registry(named)), "base_digest": base, "builder": options.builder,
             "context": str(action.rebuild.context),
             "patches": (planned.get(image.name) or {}).get("patches") or []}))

    def reach(ref: ImageRef) -> tuple[RegistryClient, ImageRef]:
        return local, ref.with_registry(local.host)

    parameters = {"deploy_settings": options.deploy_settings, "os_version": run.os_version}
    outcome = trust_images(work, reach, facts, key, parameters, options.gerrit.url, options.jobs)
    return changes + outcome.changes
