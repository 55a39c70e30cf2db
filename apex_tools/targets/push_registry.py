"""push-registry: mirror the deployment's images into the local registry, rebuild the patched ones
as ``:apex``, and write the image lists and ``docker-images.yaml``.

Check: one HEAD per image on each side (in parallel), the rebuild key tags, the local registry
answering; the fingerprint holds the upstream digests, so a moved upstream tag is noticed.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
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
    RETAG,
    SKIP,
    Rebuild,
    RebuildAction,
    RebuildReport,
    apply_rebuilds,
    builder_for,
    describe_builder,
    find_rebuilds,
    plan_rebuilds,
)
from apex_tools.registry.server import ensure_local_registry, plan_local_registry
from apex_tools.core.run import Item, RunContext, Status, TargetResult
from apex_tools.core.state import fingerprint, write_if_changed
from apex_tools.core.workdir import CONTAINERS_DIR, IMAGE_LISTS, PARAMETER_FILE, PATCH_CONTAINERS, PUSH_REGISTRY
from apex_tools.registry.clients import Clients
from apex_tools.trust.push import OFF, EarlySigner, signature_digests, signed_subjects, signing_state, trust_plan, \
    trust_step
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
           silent: dict[str, str], offline: bool = False) -> list[_Head]:
    """Upstream and local manifest digests of every image (one HEAD each side, in parallel).

    Images of a ``silent`` upstream are not asked (each would wait through every retry).
    ``offline``: upstream is never asked; the local digest stands for it (a bundle's images
    keep upstream's digests). With no local registry running, nothing is asked: every image
    is copied, and the copy's GET of each manifest by tag gives its upstream digest.
    """
    if not (local_up or offline):
        return [_Head(image) for image in images]

    def head(image: DeploymentImage) -> _Head:
        found = _Head(image)
        if image.source.registry in silent:
            return found
        try:
            if offline:
                here = clients(image.target.registry).head_manifest(image.target.repository, image.target.reference)
                found.upstream = found.local = here[0] if here else None
                found.local_checked = True
                return found
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


def _fingerprint(heads: list[_Head], actions: list[RebuildAction], insecure: str | None, named: str,
                 signing: str | None = None) -> str:
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
        "signing": signing,
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
    # The signing key's id ("off": signing disabled; None: a key is still to be generated).
    signing: str | None = None
    # Every signature the last run recorded is still there, unchanged (or signing is off).
    signatures_hold: bool = False

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
        self.learn(heads)
        self.local = local
        self.answering = answering

    def learn(self, heads: list[_Head]) -> None:
        """The upstream digests ``heads`` hold now."""
        self.by_ref = {str(h.image.target): h.upstream for h in heads}

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
    if registry_action is None and not run.dry_run and local.storage is None:
        # The registry's own storage answers the check's questions about it (a HEAD costs it ~1.5 ms).
        _attach_storage(local, Path(options.work_dir))
    offline = options.offline
    asked = {} if offline else {host: clients(host).silence() for host in sorted({i.source.registry for i in images})}
    silent = {host: reason for host, reason in asked.items() if reason is not None}
    if silent and not run.dry_run:
        raise RegistryError("upstream registry " + ", ".join(f"{h} does not answer at /v2/ ({r})" for h, r in silent.items()),
                            "check upstream.registry / upstream.ceph_registry, the network, and upstream.tls")
    signing = signing_state(options, remember=not run.dry_run)
    with ThreadPoolExecutor(max_workers=1) as side:
        # The signatures' HEADs go alongside the images' (their answer counts only when all else is current).
        signatures = side.submit(_signatures_hold, run, local, signing) if registry_action is None else None
        heads = _heads(images, clients, registry_action is None, options.jobs, silent, offline and registry_action is None)
        missing = [str(h.image.target) for h in heads if offline and h.local is None]
        if missing and not run.dry_run:
            raise RegistryError(f"offline: {len(missing)} images are not in the local registry: {', '.join(missing)}",
                                "import a bundle that holds them (apex bundle import), or run without --offline")
        record = run.state.load(PATCH_CONTAINERS)
        planned = record.data.get("rebuild") if record is not None else None
        rebuilds = find_rebuilds(Path(options.work_dir) / CONTAINERS_DIR, local.host,
                                 planned if isinstance(planned, dict) else None)
        bases = _BaseDigests(heads, local, registry_action is None)
        actions = plan_rebuilds(rebuilds, local, bases, options.builder, options.builder_fallback) \
            if registry_action is None else [
                RebuildAction(r, BUILD, reason="the local registry is not running yet",
                              builder=builder_for(r, options.builder, options.builder_fallback)) for r in rebuilds]
    insecure = named if options.registry.tls_mode != "verify" else None
    check = _Check(images, heads, rebuilds, actions, registry_action, silent, insecure,
                   _fingerprint(heads, actions, insecure, named, signing), named, signing,
                   signatures is not None and signatures.result())
    return check, bases


def _signatures_hold(run: RunContext, local: RegistryClient, signing: str | None) -> bool:
    """Every signature the last run recorded is still there, unchanged (one HEAD each); True when signing is off."""
    if signing == OFF:
        return True
    record = run.state.load(TARGET)
    recorded = record.data.get("signatures") if record is not None else None
    if not isinstance(recorded, dict) or not recorded:
        return False  # a record from before signatures were recorded: the trust step checks them
    try:
        return signature_digests(local, sorted(recorded), run.options.jobs) == recorded
    except RegistryError:
        return False  # the trust step asks again and reports the error


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
    plan += [f"{a.action} {a.rebuild.target} ({describe_builder(a)}): {a.reason}" for a in check.actions if a.action != CURRENT]
    plan.append(f"write {', '.join(p.name for p in outputs)}")
    plan.append(trust_plan(check.signing))
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
        if options.offline and not run.dry_run:
            # Offline the images are already in it (imported): it must answer before the check.
            local = clients(reachable)
            ensure_local_registry(local.host, work_dir, local, options.registry.start and local.host == run.registry_address)
        check, bases = _check(run, clients, naming, run.registry_address)
        if check.nothing_to_do and check.signatures_hold and run.up_to_date(TARGET, check.fp):
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
    if local.storage is None:
        _attach_storage(local, Path(options.work_dir))
    rebuilt_names = {r.image for r in check.rebuilds}
    early = EarlySigner(run, local, check.named, {str(h.image.target) for h in check.heads
                                                  if h.image.name in rebuilt_names}, check.signing is not None) \
        if options.signing.enabled else None
    with early or contextlib.nullcontext():
        return _copy_and_trust(run, clients, check, bases, outputs, changes, early)


def _copy_and_trust(run: RunContext, clients: Clients, check: _Check, bases: _BaseDigests, outputs: list[Path],
                    changes: list[str], early: EarlySigner | None) -> TargetResult:
    """Mirror, rebuild, sign, check, write the files, record the state (``_apply``'s body)."""
    options = run.options
    local = clients(clients.local)
    results = _mirror(run, clients, check.heads, early)
    items = [Item(r.job.target.repository, r.status, r.detail) for r in results]
    failed = [r for r in results if r.status == FAILED]
    mirrored = [r for r in results if r.status not in (FAILED, ALREADY_THERE)]
    if mirrored:
        where = "written into its storage" if local.storage is not None else "sent"
        changes.append(f"mirrored {len(mirrored)} images ({sum(r.bytes_sent for r in mirrored)} bytes {where})")
    if failed:
        changes.append(f"{failure_summary(results)}; nothing rebuilt, no parameter file written")
        return TargetResult(TARGET, Status.FAILED, changes, items)

    actions, fp = check.actions, check.fp
    if check.registry_action is not None:
        # The copies' digests are upstream's (the check asked nothing with no registry running).
        for head, result in zip(check.heads, results):
            head.upstream = head.upstream or result.digest
        bases.learn(check.heads)
        # Only now can the rebuilds be looked up; the fingerprint follows their keys.
        bases.answering = True
        actions = plan_rebuilds(check.rebuilds, local, bases, options.builder, options.builder_fallback)
        fp = _fingerprint(check.heads, actions, check.insecure, check.named, check.signing)
    engines = _Engines(options, check.insecure and local.host, local)
    report = apply_rebuilds(actions, local, engines, options.jobs) if actions else RebuildReport()
    done = {a.rebuild.image: a for a in report.done}
    made: dict[tuple[str, str], int] = {}
    for action in actions:
        if action.action == SKIP:
            items.append(Item(action.rebuild.target.repository, "skipped", action.reason))
        elif action.rebuild.image in done:
            verb = "rebuilt" if action.action == BUILD else "retagged"
            items.append(Item(action.rebuild.target.repository, verb,
                              f"{action.rebuild.target} = {action.key.tag if action.key else ''} ({action.builder})"))
            key = (verb, action.rebuild.target.tag or "")
            made[key] = made.get(key, 0) + 1
    # Counted like the mirrored ones ("6 rebuilt as :apex"); each image is an item (--verbose).
    changes += [f"{n} {verb} as :{tag}" for (verb, tag), n in sorted(made.items())]
    if report.layers_read:
        changes.append(f"native builds read {report.layers_read} layers ({report.bytes_read} bytes), "
                       f"uploaded {report.uploads} blobs")
    if report.failed:
        items += [Item(a.rebuild.target.repository, FAILED, why) for a, why in report.failed]
        changes.append(f"{len(report.failed)} images failed to rebuild; no parameter file written")
        return TargetResult(TARGET, Status.FAILED, changes, items)
    rebuilt = {a.rebuild.image for a in actions if a.action != SKIP}

    refs = parameter_refs(check.images, rebuilt)
    rebuilds = _rebuild_records(run, actions, done, check.named)
    with ThreadPoolExecutor(max_workers=1) as side:
        # Every image the files will name is looked for while the trust step signs; a missing
        # one raises before any of the files is written.
        present = side.submit(_check_present, refs, clients, options.jobs)
        trusted, signed = trust_step(run, local, check.named, [(h.image, h.upstream) for h in check.heads],
                                     results, rebuilds, early)
        present.result()
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
    changes += trusted
    if check.signing is None:  # the key was generated just now
        fp = _fingerprint(check.heads, actions, check.insecure, check.named, signing_state(options))
    # What the trust step left in the registry, so a re-run notices a signature deleted or replaced.
    signatures = {} if check.signing == OFF else \
        signature_digests(local, signed_subjects(check.images, results, rebuilds), options.jobs, signed)
    if local.storage is not None:
        local.storage.flush()
    run.state.save(TARGET, fp, outputs=outputs, data={
        "registry": check.named,
        "images": {str(h.image.target.with_registry(check.named)): h.upstream for h in check.heads},
        "rebuilt": sorted(rebuilt),
        "rebuilds": rebuilds,
        "signatures": signatures,
    })
    return TargetResult(TARGET, Status.CHANGED, changes or ["registry content verified"], items)


def _attach_storage(local: RegistryClient, work_dir: Path) -> None:
    """Read and write the local registry's storage directly when it is the one this work dir
    started, on this machine, and serves what this process sees there (``local_storage``'s
    probe): each request costs the registry 1.5 to 4 ms of CPU, most of a mirror of many small
    images and of a re-run's check. Otherwise everything goes through its API."""
    from apex_tools.bundle.storage import local_storage

    storage, how = local_storage(local.host, work_dir, local)
    if storage is not None:
        log.info("local registry %s: its storage %s read and written directly", local.host, storage.root)
    else:
        log.info("local registry %s: through its API (%s)", local.host, how)
    local.storage = storage


def _mirror(run: RunContext, clients: Clients, heads: list[_Head],
            then: Callable[[CopyResult], None] | None = None) -> list[CopyResult]:
    """Copy the images that are not already there, with progress over bytes and a line per image;
    ``then`` is called with each image's result on the worker that copied it."""
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
            if then is not None:
                then(result)

        def on_bytes(amount: int) -> None:
            with lock:
                progress.advance(amount)

        return Mirror(clients, run.options.jobs, on_bytes=on_bytes, on_image=on_image).copy_all(jobs)


class _Engines:
    """Engine builders by name, made on first use (a native-only run never contacts an engine)."""

    def __init__(self, options: Options, insecure: str | None, local: RegistryClient) -> None:
        self.insecure = [insecure] if insecure else []
        # The local registry's credentials (registry.username/password) for the engines' pushes.
        self.credentials = {local.host: local.credentials} if local.credentials else {}
        self.made: dict[str, Builder] = {}

    def __call__(self, name: str) -> Builder:
        if name not in self.made:
            from apex_tools.builders import get_builder

            self.made[name] = get_builder(name, self.insecure, self.credentials)
        return self.made[name]


def _rebuild_records(run: RunContext, actions: list[RebuildAction], done: dict[str, RebuildAction],
                     named: str) -> dict[str, dict[str, object]]:
    """Per rebuilt image: the ``:apex`` digest (from the push), key tag, base and its digest, builder, patches.

    An image already up to date keeps what the last record said of it when the key is the same.
    """
    before = run.state.load(TARGET)
    previous = (before.data.get("rebuilds") or {}) if before is not None else {}
    records: dict[str, dict[str, object]] = {}
    for action in actions:
        if action.action == SKIP or action.key is None:
            continue
        image = action.rebuild.image
        key = str(action.key.with_registry(named))
        last = previous.get(image) if isinstance(previous.get(image), dict) else None
        now = done.get(image, action)
        status = {BUILD: "rebuilt", RETAG: "retagged"}.get(now.action, "up to date")
        builder = action.builder
        if now.action != BUILD and last is not None and last.get("key") == key:
            builder = str(last.get("builder", builder))
        records[image] = {
            "ref": str(action.rebuild.target.with_registry(named)),
            "digest": now.digest,
            "key": key,
            "base": str(action.rebuild.base.with_registry(named)),
            "source": action.rebuild.source,
            "base_digest": action.base_digest,
            "builder": builder,
            "status": status,
            "patches": [dict(p) for p in action.rebuild.patches],
        }
    return records


def _check_present(refs: dict[str, ImageRef], clients: Clients, jobs: int) -> None:
    """Every image the parameter file names must be in the local registry (one HEAD each, in
    parallel); raise naming the missing. Read from its storage when the run wrote there, and then
    one image asked through its API too: the registry answers, and serves what was written."""
    unique = {str(ref): ref for ref in refs.values()}
    first = min(unique, default="")

    def absent(ref: ImageRef) -> bool:
        return clients(ref.registry).head_manifest(ref.repository, ref.reference, api=str(ref) == first) is None

    with ThreadPoolExecutor(max_workers=max(1, min(jobs * 2, len(unique) or 1))) as pool:
        missing = sorted(name for name, gone in zip(unique, pool.map(absent, unique.values())) if gone)
    if missing:
        raise RegistryError(f"{len(missing)} images named by {PARAMETER_FILE} are missing from the registry: "
                            + ", ".join(missing), "re-run push-registry with --force")

