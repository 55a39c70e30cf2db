"""push-registry: mirror the deployment's images into the local registry, rebuild the patched ones
as ``:apex``, and write the image lists and ``docker-images.yaml``.

Check: one HEAD per image on each side (in parallel), the rebuild key tags, the local registry
answering; the fingerprint holds the upstream digests, so a moved upstream tag is noticed.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from apex_tools.builders import Builder
from apex_tools.catalog.images import load_catalog
from apex_tools.core.config import Options
from apex_tools.core.errors import RegistryError
from apex_tools.core.reference import ImageRef
from apex_tools.registry.client import RegistryClient
from apex_tools.registry.deployment import (
    DeploymentImage,
    Naming,
    deployment_images,
    image_lists,
    naming_of,
    parameter_file,
    parameter_refs,
)
from apex_tools.registry.mirror import ALREADY_THERE, FAILED, CopyJob, CopyResult, Mirror, failure_summary
from apex_tools.registry.rebuild import (
    BUILD,
    CURRENT,
    SKIP,
    Rebuild,
    RebuildAction,
    apply_rebuilds,
    find_rebuilds,
    plan_rebuilds,
)
from apex_tools.registry.server import ensure_local_registry, plan_local_registry
from apex_tools.core.run import Item, RunContext, Status, TargetResult
from apex_tools.core.state import fingerprint, write_if_changed
from apex_tools.core.workdir import CONTAINERS_DIR, IMAGE_LISTS, PARAMETER_FILE, PATCH_CONTAINERS, PUSH_REGISTRY
from apex_tools.registry.clients import Clients
from apex_tools.undercloud.drivers import driver_for

log = logging.getLogger(__name__)

TARGET = PUSH_REGISTRY


@dataclass
class _Head:
    image: DeploymentImage
    upstream: str | None = None
    local: str | None = None
    local_checked: bool = False


def _heads(images: list[DeploymentImage], clients: Clients, local_up: bool, jobs: int,
           silent: dict[str, str]) -> list[_Head]:
    """Upstream and local manifest digests of every image (one HEAD each side, in parallel).

    Images of a ``silent`` upstream are not asked (each would wait through every retry).
    """

    def head(image: DeploymentImage) -> _Head:
        found = _Head(image)
        if image.source.registry in silent:
            return found
        try:
            up = clients(image.source.registry).head_manifest(image.source.repository, image.source.reference)
            found.upstream = up[0] if up else None
            if local_up:
                here = clients(image.target.registry).head_manifest(image.target.repository, image.target.reference)
                found.local, found.local_checked = (here[0] if here else None), True
        except RegistryError:
            pass  # the copy asks again and reports the error against this image
        return found

    with ThreadPoolExecutor(max_workers=max(1, min(jobs * 2, len(images) or 1))) as pool:
        return list(pool.map(head, images))


def _fingerprint(heads: list[_Head], actions: list[RebuildAction], insecure: str | None, named: str) -> str:
    """The inputs that matter: each image's names, upstream digest and parameters; rebuild keys.

    Local names use ``named`` (the registry as the undercloud names it), not the address the
    traffic took, which is a fresh port when it goes through an SSH forward.
    """
    return fingerprint({
        "images": [(str(h.image.source), str(h.image.target.with_registry(named)), h.upstream, h.image.parameters)
                   for h in heads],
        "rebuilds": [(a.rebuild.image, str(a.key.with_registry(named)) if a.key else None, a.action == SKIP)
                     for a in actions],
        "insecure": insecure,
    })


@dataclass
class _Check:
    """What the check found: the images and their digests, the rebuilds, what the registry needs."""

    images: list[DeploymentImage]
    heads: list[_Head]
    rebuilds: list[Rebuild]
    actions: list[RebuildAction]
    registry_action: str | None
    silent: dict[str, str]  # upstream host -> why it does not answer
    insecure: str | None
    fp: str
    # The registry as the undercloud names it (the files say this); the traffic may go elsewhere.
    named: str

    @property
    def to_copy(self) -> list[_Head]:
        return [h for h in self.heads if not (h.upstream and h.local == h.upstream)]

    @property
    def nothing_to_do(self) -> bool:
        return self.registry_action is None and not self.to_copy and all(
            a.action in (CURRENT, SKIP) for a in self.actions)


class _BaseDigests:
    """A rebuild's base digest: the upstream digest of a mirrored image, else a HEAD on the local registry."""

    def __init__(self, heads: list[_Head], local: RegistryClient, answering: bool) -> None:
        self.by_ref = {str(h.image.target): h.upstream for h in heads}
        self.local = local
        self.answering = answering

    def __call__(self, ref: ImageRef) -> str | None:
        key = str(ref.with_registry(self.local.host))
        if key in self.by_ref:
            return self.by_ref[key]
        if not self.answering:
            return None
        found = self.local.head_manifest(ref.repository, ref.reference)
        return found[0] if found else None


def _check(run: RunContext, clients: Clients, naming: Naming, named: str) -> tuple[_Check, _BaseDigests]:
    """One HEAD per image on each side, the rebuild keys; raises when an upstream is silent (not in a dry run)."""
    options = run.options
    local = clients(naming.local_registry)
    images = deployment_images(load_catalog(run.os_version), run.deploy_settings, naming)
    # Through a forward the registry is the undercloud's: never one to start here.
    registry_action = plan_local_registry(local.host, local, options.registry.start and local.host == named)
    asked = {host: clients(host).silence() for host in sorted({i.source.registry for i in images})}
    silent = {host: reason for host, reason in asked.items() if reason is not None}
    if silent and not run.dry_run:
        raise RegistryError("upstream registry " + ", ".join(f"{h} does not answer at /v2/ ({r})" for h, r in silent.items()),
                            "check upstream.registry / upstream.ceph_registry, the network, and upstream.tls")
    heads = _heads(images, clients, registry_action is None, options.jobs, silent)
    record = run.state.load(PATCH_CONTAINERS)
    planned = record.data.get("rebuild") if record is not None else None
    rebuilds = find_rebuilds(Path(options.work_dir) / CONTAINERS_DIR, local.host,
                             planned if isinstance(planned, dict) else None)
    bases = _BaseDigests(heads, local, registry_action is None)
    actions = plan_rebuilds(rebuilds, local, bases) if registry_action is None else [
        RebuildAction(r, BUILD, reason="the local registry is not running yet") for r in rebuilds]
    insecure = named if options.registry.tls_mode != "verify" else None
    check = _Check(images, heads, rebuilds, actions, registry_action, silent, insecure,
                   _fingerprint(heads, actions, insecure, named), named)
    return check, bases


def _plan(check: _Check, local: str, outputs: list[Path]) -> list[str]:
    """The actions a run would take, one line each with its reason."""
    plan = [check.registry_action] if check.registry_action else []
    plan += [f"upstream registry {'' if host in why else host + ' '}unreachable: {why}"
             for host, why in check.silent.items()]
    if check.silent:
        plan.append("a real run stops here: it needs the upstream registry")
    if check.to_copy:
        plan.append(f"mirror {len(check.to_copy)} of {len(check.images)} images to {local} "
                    "(not there, or upstream moved)")
    plan += [f"{a.action} {a.rebuild.target}: {a.reason}" for a in check.actions if a.action != CURRENT]
    plan.append(f"write {', '.join(p.name for p in outputs)}")
    return plan


def push_registry(run: RunContext) -> TargetResult:
    """Mirror, rebuild, write the lists and the parameter file (check → plan → apply)."""
    options = run.options
    work_dir = Path(options.work_dir)
    # The undercloud's driver says how this host reaches the registry (an SSH forward for a
    # NAT'd VM or a remote undercloud); the files still name it as the undercloud does.
    driver = driver_for(options, run.registry_address)
    with driver.reachable_registry() as reachable:
        naming = replace(naming_of(run), local_registry=reachable)
        clients = Clients(options, naming.local_registry)
        outputs = [work_dir / name for name in (*IMAGE_LISTS, PARAMETER_FILE)]
        check, bases = _check(run, clients, naming, run.registry_address)
        if check.nothing_to_do and run.up_to_date(TARGET, check.fp):
            return TargetResult(TARGET, Status.UP_TO_DATE, ["up to date"])
        if run.dry_run:
            return TargetResult(TARGET, Status.PLANNED, _plan(check, naming.local_registry, outputs))
        return _apply(run, clients, check, bases, outputs)


def _apply(run: RunContext, clients: Clients, check: _Check, bases: _BaseDigests, outputs: list[Path]) -> TargetResult:
    """Start the registry if needed, mirror, rebuild, check, write the files, record the state."""
    options = run.options
    local = clients(clients.local)
    changes: list[str] = []
    started = ensure_local_registry(local.host, Path(options.work_dir), local,
                                    options.registry.start and local.host == check.named)
    if started.started:
        changes.append(f"started the local registry on {local.host} (pid {started.pid})")
    results = _mirror(run, clients, check.heads)
    items = [Item(r.job.target.repository, r.status, r.detail) for r in results]
    failed = [r for r in results if r.status == FAILED]
    mirrored = [r for r in results if r.status not in (FAILED, ALREADY_THERE)]
    if mirrored:
        changes.append(f"mirrored {len(mirrored)} images ({sum(r.bytes_sent for r in mirrored)} bytes sent)")
    if failed:
        changes.append(f"{failure_summary(results)}; nothing rebuilt, no parameter file written")
        return TargetResult(TARGET, Status.FAILED, changes, items)

    actions, fp = check.actions, check.fp
    if check.registry_action is not None:
        # Only now can the rebuilds be looked up; the fingerprint follows their keys.
        bases.answering = True
        actions = plan_rebuilds(check.rebuilds, local, bases)
        fp = _fingerprint(check.heads, actions, check.insecure, check.named)
    done = apply_rebuilds(actions, _builder(options, check.insecure and local.host, local), local) if actions else []
    for action in actions:
        if action.action == SKIP:
            items.append(Item(action.rebuild.target.repository, "skipped", action.reason))
        elif action in done:
            verb = "rebuilt" if action.action == BUILD else "retagged"
            items.append(Item(action.rebuild.target.repository, verb,
                              f"{action.rebuild.target} = {action.key.tag if action.key else ''}"))
            changes.append(f"{verb} {action.rebuild.target}")
    rebuilt = {a.rebuild.image for a in actions if a.action != SKIP}

    refs = parameter_refs(check.images, rebuilt)
    _check_present(refs, clients)
    named_images = [replace(i, target=i.target.with_registry(check.named)) for i in check.images]
    named_refs = {p: ref.with_registry(check.named) for p, ref in refs.items()}
    creds = local.credentials
    login = (check.named, creds.username, creds.password) if creds else None
    files = {**image_lists(named_images), PARAMETER_FILE: parameter_file(named_refs, check.insecure, login)}
    # The parameter file holds the registry password when there is one: private.
    written = [path.name for path in outputs
               if write_if_changed(path, files[path.name], mode=0o600 if login and path.name == PARAMETER_FILE
                                   else 0o644)]
    if written:
        changes.append(f"wrote {', '.join(written)}")
    run.state.save(TARGET, fp, outputs=outputs, data={
        "registry": check.named,
        "images": {str(h.image.target.with_registry(check.named)): h.upstream for h in check.heads},
        "rebuilt": sorted(rebuilt),
    })
    return TargetResult(TARGET, Status.CHANGED, changes or ["registry content verified"], items)


def _mirror(run: RunContext, clients: Clients, heads: list[_Head]) -> list[CopyResult]:
    """Copy the images that are not already there, with progress over bytes and a line per image."""
    # What the check found is handed on: images whose digests matched are not asked again.
    jobs = [CopyJob(h.image.source, h.image.target, h.upstream, h.local, h.local_checked) for h in heads]
    total = len(jobs)
    done = 0
    lock = threading.Lock()
    with run.progress(f"mirroring {total} images", None) as progress:

        def on_image(result: CopyResult) -> None:
            nonlocal done
            with lock:
                done += 1
                # One line per image on the screen only with --verbose (the summary counts them),
                # failures always; the log file has every one.
                level = logging.WARNING if result.status == FAILED else logging.DEBUG
                log.log(level, "[%d/%d] %s: %s %s", done, total, result.job.target, result.status, result.detail)

        def on_bytes(amount: int) -> None:
            with lock:
                progress.advance(amount)

        return Mirror(clients, run.options.jobs, on_bytes=on_bytes, on_image=on_image).copy_all(jobs)


def _builder(options: Options, insecure: str | None, local: RegistryClient) -> Builder:
    from apex_tools.builders import get_builder

    credentials = {local.host: local.credentials} if local.credentials else {}
    return get_builder(options.builder, [insecure] if insecure else [], credentials)


def _check_present(refs: dict[str, ImageRef], clients: Clients) -> None:
    """Every image the parameter file names must be in the local registry; raise naming the missing."""
    missing = sorted({str(ref) for ref in refs.values()
                      if clients(ref.registry).head_manifest(ref.repository, ref.reference) is None})
    if missing:
        raise RegistryError(f"{len(missing)} images named by {PARAMETER_FILE} are missing from the registry: "
                            + ", ".join(missing), "re-run push-registry with --force")

