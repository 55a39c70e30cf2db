"""bundle-export: write what a deployment needs into a bundle a disconnected site can import.

Not part of ``deploy``: ``apex bundle export`` runs fetch-images and patch-containers first,
then this. Check: one GET per image manifest upstream (small), the cached disk images and the
patch caches; the plan is the bundle manifest. A folder already holding exactly that bundle is
"up to date"; otherwise only the blobs it lacks are written (and those no longer referenced
removed). ``--tar`` streams the same bundle into one file (written to a temporary name, renamed
when complete). ``--since OLD`` leaves out every blob OLD (and its own base) holds.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from apex_tools.bundle.export import (
    DISK_IMAGE,
    WORK_FILE,
    BundlePlan,
    FileItem,
    ImageItem,
    bundle_ref,
    file_digest,
    look_image,
    look_images,
    plan_bundle,
    write_bundle,
)
from apex_tools.bundle.layout import BUNDLE_FILE, DirWriter, TarWriter, read_document
from apex_tools.catalog.images import load_catalog
from apex_tools.core.errors import BundleError, RegistryError
from apex_tools.core.run import Item, RunContext, Status, TargetResult
from apex_tools.core.state import atomic_file, fingerprint, write_if_changed
from apex_tools.core.workdir import (
    BUNDLE_EXPORT,
    CONTAINERS_DIR,
    GERRIT_CACHE,
    IPA_TAR,
    LOOKUPS_CACHE,
    OVERCLOUD_TAR,
    PATCH_CONTAINERS,
    UNDERCLOUD_QCOW2,
    artifact_dir,
)
from apex_tools.http.download import human_size
from apex_tools.http.filecache import cached_validators
from apex_tools.patching.gerrit import triplet
from apex_tools.registry.clients import Clients
from apex_tools.registry.deployment import Naming, deployment_images, naming_of
from apex_tools.registry.rebuild import CURRENT, NATIVE, RETAG, find_rebuilds, plan_rebuilds

log = logging.getLogger(__name__)

TARGET = BUNDLE_EXPORT
DIGESTS_CACHE = "cache/bundle-digests.json"


def _disk_images(run: RunContext) -> list[FileItem]:
    """The cached upstream disk images with fetch-images' record of their upstream version."""
    options = run.options
    folder = artifact_dir(options, run.os_version)
    names = [OVERCLOUD_TAR, IPA_TAR] + ([UNDERCLOUD_QCOW2] if options.fetch.undercloud_image else [])
    cache_path = options.work_dir / DIGESTS_CACHE
    try:
        known: dict[str, Any] = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        known = {}
    items = []
    for name in names:
        path = folder / name
        validators = cached_validators(path)
        if validators is None:
            raise BundleError(f"{path}: not in the image cache (or changed since it was fetched)",
                              "run `apex fetch-images` (bundle export runs it first unless it failed)")
        # Hashing a disk image costs seconds a GB: remembered by size and mtime.
        stamp = [validators.size, validators.mtime_ns]
        entry = known.get(str(path))
        if entry is None or entry[:2] != stamp:
            upstream = validators.digests.get("sha256")
            entry = known[str(path)] = [*stamp, f"sha256:{upstream}" if upstream else file_digest(path)]
        record = validators.identity()
        items.append(FileItem(DISK_IMAGE, name, path, entry[2], validators.size, record))
    write_if_changed(cache_path, json.dumps(known, indent=1, sort_keys=True) + "\n")
    return items


def _patches(run: RunContext) -> tuple[list[dict[str, Any]], list[FileItem]]:
    """Every patch's identity (patch-containers' record) and the Gerrit cache files that answer it."""
    record = run.state.load(PATCH_CONTAINERS)
    if record is None:
        raise BundleError("patch-containers has no record", "run `apex patch-containers` first")
    work = run.options.work_dir
    identities, paths = [], []
    for patch in record.data.get("patches", []):
        identities.append({**{k: patch.get(k, "") for k in ("side", "project", "change_id", "branch", "revision",
                                                             "status")},
                           **{k: patch[k] for k in ("patch_set", "commit") if patch.get(k)}})
        if patch.get("status") == "LOCAL":
            continue  # a local file: named by its sha256 in `revision`, read where the settings point
        paths.append(f"{GERRIT_CACHE}/changes/{triplet(patch['project'], patch['branch'], patch['change_id'])}.json")
        if patch.get("status") != "ABANDONED":
            paths.append(f"{GERRIT_CACHE}/patches/{patch['revision']}.patch")
    if (work / LOOKUPS_CACHE).is_file():
        paths.append(LOOKUPS_CACHE)
    files = []
    for rel in paths:
        path = work / rel
        if not path.is_file():
            raise BundleError(f"{path}: patch-containers' cache lacks it", "run `apex patch-containers --force`")
        files.append(FileItem(WORK_FILE, rel, path, file_digest(path), path.stat().st_size))
    return identities, files


def _rebuilt(run: RunContext, items: list[ImageItem], clients: Clients, naming: Naming) -> list[ImageItem]:
    """The engine-built rebuilds the local registry holds for exactly these bases and patches.

    The native builder re-makes its images offline (no engine, no network, same digests), so
    they are not carried. An engine build (an OpenDaylight reinstall) needs a package mirror,
    so it rides along under its key tag (named by its inputs: the base digest and the build
    context); the importing side's push-registry finds it and re-points ``:apex`` at it.
    """
    record = run.state.load(PATCH_CONTAINERS)
    planned = record.data.get("rebuild") if record else None
    local = clients(naming.local_registry)
    if not planned or local.silence() is not None:
        return []
    digests = {i.ref: i.manifest.digest for i in items}
    rebuilds = find_rebuilds(run.options.work_dir / CONTAINERS_DIR, local.host, planned)
    actions = plan_rebuilds(rebuilds, local, lambda ref: digests.get(bundle_ref(ref)), run.options.builder,
                            run.options.builder_fallback)
    return [look_image(local, a.key) for a in actions
            if a.builder != NATIVE and a.key is not None and a.action in (RETAG, CURRENT)]


def _settings(run: RunContext) -> dict[str, Any]:
    """The resolved configuration, credentials left out."""
    data = run.options.model_dump(mode="json")
    for section in ("upstream", "registry"):
        data[section].pop("password", None)
    return data


def _todo(run: RunContext, plan: BundlePlan, path: Path | None, tar: Path | None) -> list[tuple[str, int]] | None:
    """The blobs the destination lacks; None when it holds exactly this bundle already."""
    if path is not None:
        todo = [(d, s) for d, s in plan.blobs if not DirWriter.present(path, d, s)]
        same = (path / BUNDLE_FILE).is_file() and (path / BUNDLE_FILE).read_bytes() == plan.bytes
        return None if same and not todo and not run.force else todo
    assert tar is not None
    record = run.state.load(TARGET)
    done = record.data.get("tars", {}).get(str(tar)) if record else None
    current = done == [plan.id, tar.stat().st_size if tar.is_file() else -1]
    return None if current and not run.force else list(plan.blobs)


def _summary(plan: BundlePlan, rebuilt: int, base: tuple[dict[str, Any], str] | None) -> str:
    document = plan.document
    text = (f"{len(document['images'])} images ({rebuilt} rebuilt), {len(document['files'])} files, "
            f"{len(plan.blobs)} blobs ({human_size(sum(s for _, s in plan.blobs))})")
    if base:
        text += f"; {len(document['base_contents'])} blobs left to the base bundle {base[1]}"
    return text


def bundle_export(run: RunContext, path: Path | None = None, tar: Path | None = None,
                  since: Path | None = None) -> TargetResult:
    """Plan the bundle from upstream's manifests and the caches; write what the destination lacks."""
    if (path is None) == (tar is None):
        raise BundleError("bundle export needs one destination", "give --path DIR or --tar FILE")
    options = run.options
    naming = naming_of(run)
    clients = Clients(options, naming.local_registry)
    images = deployment_images(load_catalog(run.os_version), run.deploy_settings, naming)
    for host in sorted({i.source.registry for i in images}):
        reason = clients(host).silence()
        if reason is not None:
            raise RegistryError(f"upstream registry {host} does not answer at /v2/ ({reason})",
                                "bundle export runs on the connected side: check upstream.registry and the network")
    items = look_images([i.source for i in images], clients, options.jobs)
    items += _rebuilt(run, items, clients, naming)
    identities, patch_files = _patches(run)
    base = read_document(since) if since is not None else None
    header = {"os_version": run.os_version, "settings": _settings(run), "patches": identities}
    plan = plan_bundle(items, _disk_images(run) + patch_files, clients, header, base)
    where = str(path if path is not None else tar)
    rows = [Item(i.ref, "in the bundle", i.manifest.digest) for i in items]
    todo = _todo(run, plan, path, tar)
    if todo is None:
        return TargetResult(TARGET, Status.UP_TO_DATE, [f"up to date: {where} holds bundle {plan.id}"], rows)
    summary = _summary(plan, len(items) - len(images), base)
    if run.dry_run:
        return TargetResult(TARGET, Status.PLANNED, [
            f"write bundle to {where}: {summary}", f"write {len(todo)} blobs ({human_size(sum(s for _, s in todo))})"],
            rows)

    with run.progress(f"exporting to {where}", sum(s for _, s in todo)) as progress:
        if path is not None:
            count, written, removed = write_bundle(plan, DirWriter(path), options.jobs, progress.advance)
        else:
            assert tar is not None
            with atomic_file(tar) as handle:
                writer = TarWriter(handle)
                count, written, removed = write_bundle(plan, writer, options.jobs, progress.advance)
                writer.close()
    changes = [f"bundle {plan.id} in {where}: {summary}",
               f"wrote {count} blobs ({human_size(written)})" + (f", removed {len(removed)} no longer needed"
                                                                 if removed else "")]
    if base:
        changes.append(f"differential: the importing side needs bundle {base[1]} imported first")
    record = run.state.load(TARGET)
    tars = dict(record.data.get("tars", {})) if record else {}
    if tar is not None:
        tars[str(tar)] = [plan.id, tar.stat().st_size]
    run.state.save(TARGET, fingerprint({"id": plan.id}), outputs=[], data={
        "bundle": plan.id, "where": where, "tars": tars})
    return TargetResult(TARGET, Status.CHANGED, changes, rows)
