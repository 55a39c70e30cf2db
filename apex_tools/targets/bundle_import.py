"""bundle-import: load a bundle with no network but loopback: its images into the local registry
(started as push-registry starts it), its disk images into the image cache with the records
fetch-images would have left, its patch caches into the work dir.

Check: the bundle's small files against its manifest, one HEAD per image tag (and per blob of
the images to load), each file's digest; the plan is what differs. Not part of ``deploy``.
"""

from __future__ import annotations

import logging
import posixpath
from pathlib import Path
from typing import Any

from apex_tools.bundle.export import DISK_IMAGE, WORK_FILE
from apex_tools.bundle.layout import open_bundle, sha256_of
from apex_tools.bundle.load import FAILED, LOADED, load_bundle, plan_import
from apex_tools.bundle.storage import local_storage
from apex_tools.core.errors import BundleError
from apex_tools.core.run import Item, RunContext, Status, TargetResult
from apex_tools.core.state import fingerprint
from apex_tools.core.workdir import BUNDLE_IMPORT, artifact_dir
from apex_tools.http.download import human_size
from apex_tools.registry.clients import Clients
from apex_tools.registry.server import ensure_local_registry, plan_local_registry

log = logging.getLogger(__name__)

TARGET = BUNDLE_IMPORT


def _dest_of(run: RunContext, os_version: str) -> Any:
    options = run.options

    def dest(entry: dict[str, Any]) -> Path:
        rel = posixpath.normpath(entry["path"])
        if rel.startswith(("/", "../")) or rel == "..":
            raise BundleError(f"bundle file {entry['path']!r} would land outside its folder",
                              "the bundle manifest is corrupt or hostile: do not import it")
        if entry["kind"] == DISK_IMAGE:
            return artifact_dir(options, os_version) / rel
        if entry["kind"] == WORK_FILE:
            return Path(options.work_dir) / rel
        raise BundleError(f"bundle file {entry['path']}: unknown kind {entry['kind']!r}",
                          "import it with the apex-tools version that exported it")

    return dest


def bundle_import(run: RunContext, path: Path | None = None, tar: Path | None = None) -> TargetResult:
    """Verify and load what the bundle has and this site lacks (check → plan → apply)."""
    if (path is None) == (tar is None):
        raise BundleError("bundle import needs one source", "give --path DIR or --tar FILE")
    options = run.options
    reader = open_bundle(path, tar)
    try:
        document = reader.document
        bundle_id = sha256_of(reader.bundle_bytes)
        if document["os_version"] != run.os_version:
            log.warning("the bundle is for %s, this site's deploy settings for %s", document["os_version"],
                        run.os_version)
        address = run.registry_address
        clients = Clients(options, address)
        local = clients(address)
        dest_of = _dest_of(run, document["os_version"])
        start = plan_local_registry(address, local, options.registry.start)
        if run.dry_run and start is not None:
            return TargetResult(TARGET, Status.PLANNED, [start, f"import bundle {bundle_id}: "
                                f"{len(document['images'])} images, {len(document['files'])} files"])
        started = None
        if not run.dry_run:
            started = ensure_local_registry(address, Path(options.work_dir), local, options.registry.start)
        plan = plan_import(document, local, dest_of, options.jobs)
        if plan.missing:
            base = document.get("base")
            raise BundleError(
                f"{reader.where}: {len(plan.missing)} blobs this site lacks are not in the bundle "
                f"(first: {plan.missing[0]})",
                f"it is differential: import bundle {base['id']} first" if base else "the bundle is incomplete")
        fp = fingerprint({"bundle": bundle_id, "registry": address})
        if plan.nothing_to_do and not run.force:
            _remember(run, fp, bundle_id)
            return TargetResult(TARGET, Status.UP_TO_DATE, [
                f"up to date: bundle {bundle_id} ({plan.skipped_images} images, {plan.skipped_files} files) "
                "already here"])
        size = sum(s for _, s in plan.needed)
        lines = [f"import bundle {bundle_id} from {reader.where}: {len(plan.images)} images, {len(plan.files)} "
                 f"files, {len(plan.needed)} blobs ({human_size(size)}) to read"]
        if run.dry_run:
            return TargetResult(TARGET, Status.PLANNED, lines)
        storage = None
        if plan.images:
            storage, how = local_storage(address, Path(options.work_dir), local)
            log.info("image blobs: %s", how if storage else f"through the registry's API ({how})")
        with run.progress(f"importing {reader.where}", size) as progress:
            results = load_bundle(reader, plan, local, dest_of, progress.advance, options.jobs, storage)
    finally:
        reader.close()
    changes = ([f"started the local registry on {address} (pid {started.pid})"] if started and started.started
               else [])
    if storage is not None:
        changes.append(f"image blobs written straight into the registry's storage {storage.root}")
    items = [Item(r.name, r.status, r.detail) for r in results]
    failed = [r for r in results if r.status == FAILED]
    loaded = [r for r in results if r.status == LOADED]
    changes.append(f"imported {len(loaded)} of {len(results)} items of bundle {bundle_id}"
                   + (f" ({plan.skipped_images + plan.skipped_files} already here)"
                      if plan.skipped_images + plan.skipped_files else ""))
    if failed:
        changes.append(f"{len(failed)} failed, nothing of them imported: " + "; ".join(r.detail for r in failed[:3]))
        return TargetResult(TARGET, Status.FAILED, changes, items)
    if storage is not None:
        storage.flush()
    _remember(run, fp, bundle_id)
    return TargetResult(TARGET, Status.CHANGED, changes, items)


def _remember(run: RunContext, fp: str, bundle_id: str) -> None:
    record = run.state.load(TARGET)
    imported = list(record.data.get("imported", [])) if record else []
    if bundle_id not in imported:
        imported.append(bundle_id)
    run.state.save(TARGET, fp, outputs=[], data={"imported": imported, "last": bundle_id})
