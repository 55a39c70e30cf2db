"""patch-containers: sort the deployment's patches, write a Dockerfile per image to rebuild, the
disk-image patch sets, and ``docker_patches.tar.gz``.

Outputs under ``work_dir``:
  containers/<image>/Dockerfile (+ its patch files, + opendaylight.repo)  built by push-registry
  docker_patches.tar.gz           ``containers/`` packed reproducibly, for the undercloud
  image_patches/{overcloud,undercloud}/NN-<name>.patch + manifest.json   applied by ceph-loop
  manifest.json: a list, in order, of {project, change_id, revision, [patch_set, commit,] file, target_dir,
                 strip}   (patch_set and commit: Gerrit changes only; a local file's change_id is its path)

State data (``run.state.load("patch-containers").data``):
  rebuild    {image: {dockerfile, context, from, upstream, user, opendaylight, engine_only, labels: [[k, v]],
                 patches: [{project, change_id, revision, [patch_set, commit,] file, target_dir, strip,
                 label}]}}
             (images with a Dockerfile; push-registry's native builder works from this, not the Dockerfile)
  missing_upstream  {image: upstream ref}  images that should be rebuilt but are not upstream
  disk_image {overcloud: [manifest entries], undercloud: [...]}
  patches    [{side, project, change_id, branch, revision, [patch_set, commit,] status, parts: [{destination,
                 target_dir, images, files}], dropped: [files]}]   every patch asked for
  skipped    [{project, change_id, image?, reason}]  what was not applied (and where) and why
  archive    absolute path of docker_patches.tar.gz
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import re
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Literal

import requests
from pydantic import BaseModel, ConfigDict, Field

from apex_tools.catalog.images import Catalog, load_catalog
from apex_tools.patching.dockerfile import ImagePatch, image_labels, render_dockerfile, render_odl_repo
from apex_tools.http.download import join_url
from apex_tools.core import yamlfile
from apex_tools.core.config import settings_path
from apex_tools.core.settings import validate_model
from apex_tools.core.errors import GerritError, RegistryError, SettingsError
from apex_tools.patching.gerrit import GerritClient, GerritUnreachable
from apex_tools.registry.image_config import ImageInfo, Inspector, inspect_image
from apex_tools.patching.patches import Location, PatchPart, check_patch, load_projects, sort_patch
from apex_tools.core.reference import ImageRef
from apex_tools.registry.auth import parse_time
from apex_tools.registry.deployment import deployment_images, naming_of
from apex_tools.core.run import Item, RunContext, Status, TargetResult
from apex_tools.core.state import fingerprint, write_if_changed
from apex_tools.core.workdir import (
    CONTAINERS_DIR,
    GERRIT_CACHE,
    IMAGE_PATCHES_DIR,
    LOOKUPS_CACHE,
    OVERCLOUD_TAR,
    PATCH_ARCHIVE,
    PATCH_CONTAINERS,
    UNDERCLOUD_QCOW2,
)
from apex_tools.registry.clients import Clients

log = logging.getLogger(__name__)

TARGET = PATCH_CONTAINERS
ARCHIVE = PATCH_ARCHIVE
Side = Literal["overcloud", "undercloud"]
SIDES: tuple[Side, ...] = ("overcloud", "undercloud")
# The disk image whose upstream age decides whether a merged change is already in it.
DISK_ARTIFACTS = {"overcloud": OVERCLOUD_TAR, "undercloud": UNDERCLOUD_QCOW2}


@dataclass(frozen=True)
class Request:
    """One patch asked for: a Gerrit change, or a local patch file."""

    side: Side
    project: str
    change_id: str = ""
    branch: str = ""
    path: str = ""

    @property
    def name(self) -> str:
        """The change id, or the local file's name made safe for a file name."""
        return self.change_id or re.sub(r"[^A-Za-z0-9._-]+", "-", Path(self.path).stem)

    @property
    def title(self) -> str:
        return f"{self.project} {self.change_id or self.path}"


@dataclass(frozen=True)
class Resolved:
    """A request with what it resolved to: revision (patch set, commit), Gerrit status and the patch text."""

    request: Request
    status: str
    revision: str = ""
    submitted: datetime | None = None
    text: str = ""
    patch_set: int = 0  # Gerrit changes only
    commit: str = ""


class _LocalPatch(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)
    path: str = Field(min_length=1)
    project: str = Field(min_length=1)


class _LocalPatches(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)
    overcloud: tuple[_LocalPatch, ...] = ()
    undercloud: tuple[_LocalPatch, ...] = ()


def default_branch(os_version: str) -> str:
    """``master`` for master, else ``stable/<os_version>``."""
    return "master" if os_version == "master" else f"stable/{os_version}"


def local_requests(path: Path) -> list[Request]:
    """The local patches file (``{overcloud,undercloud}: [{path, project}]``), paths made absolute."""
    # Problems named like the settings files' (file, key, value, what is allowed).
    data = validate_model(_LocalPatches, yamlfile.load_mapping(path, "local patches", empty_ok=True), path)
    out = []
    for side in SIDES:
        for entry in getattr(data, side):
            file = (path.parent / entry.path).resolve()
            out.append(Request(side, entry.project, path=str(file)))
    return out


def requested(run: RunContext) -> list[Request]:
    """Every patch of the run: Gerrit changes (settings + common), then local files, per side."""
    branch = default_branch(run.os_version)
    out = [Request(side, p.project, p.change_id, p.branch or branch)
           for side in SIDES for p in getattr(run.patches, side)]
    if run.options.patching.local_patches:
        # A path, or a bundled list by name (config/patches/<name>.yaml, e.g. the lab's).
        out += local_requests(settings_path(run.options.patching.local_patches, "patches"))
    return out


CONFIGS_KEY = "configs"


class CachedLookups:
    """Upstream image configs and disk-image ages, remembered in the work dir for no_fetch runs."""

    def __init__(self, path: Path, inspect: Inspector, artifact_time: Callable[[str], datetime | None],
                 offline: bool, configs: dict[str, Any] | None = None) -> None:
        self.path = path
        self._inspect = inspect
        self._artifact_time = artifact_time
        self.offline = offline
        try:
            self.data: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            self.data = {}
        self._seen: dict[str, Any] = {}
        # Image configs read before, by digest (``inspect_image``'s cache), kept with the rest.
        self.configs = configs if configs is not None else {}
        kept = self.data.get(CONFIGS_KEY)
        self.configs.update(kept if isinstance(kept, dict) else {})
        self.data[CONFIGS_KEY] = self.configs

    def _lookup(self, key: str, fetch: Callable[[], Any], what: str) -> Any:
        if key in self._seen:
            return self._seen[key]
        if self.offline:
            if key not in self.data:
                raise RegistryError(f"{what} {key}: not cached and no_fetch is set",
                                    "run once without no_fetch so it is looked up and remembered")
            value = self.data[key]
        else:
            value = fetch()
        self._seen[key] = self.data[key] = value
        return value

    def image(self, ref: ImageRef) -> ImageInfo | None:
        """``inspect(ref)``: None when the image is not upstream."""
        def fetch() -> Any:
            info = self._inspect(ref)
            return None if info is None else {
                "created": info.created.isoformat() if info.created else None, "user": info.user}
        value = self._lookup(f"image {ref}", fetch, "upstream image")
        return None if value is None else ImageInfo(parse_time(value["created"]), value["user"])

    def artifact(self, url: str) -> datetime | None:
        """When the upstream disk image at ``url`` was last modified (None: unknown)."""
        def fetch() -> Any:
            when = self._artifact_time(url)
            return when.isoformat() if when else None
        return parse_time(self._lookup(f"artifact {url}", fetch, "upstream artifact"))

    def save(self) -> None:
        write_if_changed(self.path, json.dumps(self.data, indent=1, sort_keys=True) + "\n")


def http_last_modified(url: str, timeout: float = 30.0) -> datetime | None:
    """``Last-Modified`` of ``url`` by HEAD; None (with a warning) when it cannot be read."""
    try:
        response = requests.head(url, timeout=timeout, allow_redirects=True)
        value = response.headers.get("Last-Modified") if response.ok else None
        return parsedate_to_datetime(value) if value else None
    except (requests.RequestException, TypeError, ValueError) as exc:
        log.warning("%s: cannot read its age (%s); merged changes are applied to the disk image", url, exc)
        return None


@dataclass
class Plan:
    """Everything the target would write, and why."""

    files: dict[str, bytes] = field(default_factory=dict)
    changes: list[str] = field(default_factory=list)
    items: list[Item] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    # One line per image to rebuild: a dry run's plan lists them; a run counts them (rows: --verbose).
    rebuilds: list[str] = field(default_factory=list)


def _entry(req: Request, res: Resolved) -> dict[str, Any]:
    """A patch's identity: project, change-id (a local file: its path), revision, patch set and commit."""
    gerrit = {"patch_set": res.patch_set, "commit": res.commit} if res.patch_set else {}
    return {"project": req.project, "change_id": req.change_id or req.path, "revision": res.revision, **gerrit}


class Planner:
    """Resolve, sort and render: builds a Plan and touches nothing but read-through caches."""

    def __init__(self, run: RunContext, gerrit: GerritClient, lookups: CachedLookups) -> None:
        self.run = run
        self.opts = run.options
        self.gerrit = gerrit
        self.lookups = lookups
        self.catalog: Catalog = load_catalog(run.os_version)
        self.table = load_projects()
        # Only images this deployment runs are rebuilt (push-registry mirrors no others), under
        # the very names push-registry mirrors them to.
        self.images = {i.name: i for i in deployment_images(self.catalog, run.deploy_settings, naming_of(run))}
        self.plan = Plan()
        # A dry run lists what it cannot look up (offline, unreachable) instead of failing.
        self.unresolved: list[str] = []
        self.skipped: list[dict[str, str]] = []
        self.image_patches: dict[str, list[tuple[Request, Resolved, PatchPart]]] = {}
        self.disk: dict[str, list[tuple[Request, Resolved, PatchPart]]] = {s: [] for s in SIDES}

    # -- resolve ---------------------------------------------------------------------------
    def resolve(self, req: Request) -> Resolved:
        if req.path:
            try:
                raw = Path(req.path).read_bytes()
            except OSError as exc:
                raise SettingsError(f"local patch {req.path} ({req.project}): {exc.strerror}",
                                    "fix the path in patching.local_patches") from None
            digest = hashlib.sha256(raw).hexdigest()
            return Resolved(req, "LOCAL", f"sha256:{digest[:16]}", None, raw.decode("utf-8", "surrogateescape"))
        change = self.gerrit.change(req.project, req.branch, req.change_id)
        text = "" if change.status == "ABANDONED" else self.gerrit.patch(change)
        return Resolved(req, change.status, change.revision, change.submitted, text, change.patch_set, change.commit)

    def _skip(self, req: Request, reason: str, image: str = "") -> None:
        entry = {"project": req.project, "change_id": req.change_id or req.path, "reason": reason}
        if image:
            entry["image"] = image
        self.skipped.append(entry)
        where = f" in {image}" if image else ""
        self.plan.items.append(Item(f"{req.title}{where}", "skipped", reason))
        self.plan.changes.append(f"skip {req.title}{where}: {reason}")

    def _merged_in(self, res: Resolved, built: datetime | None) -> bool:
        """A merged change submitted before the upstream artifact was built is already in it."""
        return res.status == "MERGED" and res.submitted is not None and built is not None and built > res.submitted

    # -- sort ------------------------------------------------------------------------------
    def add(self, req: Request) -> dict[str, Any]:
        res = self.resolve(req)
        record: dict[str, Any] = {"side": req.side, **_entry(req, res), "branch": req.branch,
                                  "status": res.status, "parts": [], "dropped": []}
        if res.status == "ABANDONED":
            log.warning("%s: change is ABANDONED; skipping it", req.title)
            self._skip(req, "change is ABANDONED")
            return record
        # Before any of it is sorted, written or built: no path out of its folder, no torn hunk.
        check_patch(res.text, f"patch {req.title}" + (f" (revision {res.revision})" if req.change_id else ""))
        location: Location = self.table.locate(req.project, self.run.os_version, self.opts.patching.python_path)
        containers = self.run.deploy_settings.deploy_options.containers
        images = tuple(n for n in self.catalog.images_for_project(req.project) if n in self.images)
        result = sort_patch(res.text, location, req.side, images, containers, self.opts.patching.drop_patterns)
        record["dropped"] = list(result.dropped)
        if not result.parts:
            self._skip(req, "nothing it changes is installed (only " + (", ".join(result.dropped) or "no files") + ")")
            return record
        for part in result.parts:
            record["parts"].append({"destination": part.destination, "target_dir": part.target_dir,
                                    "images": list(part.images), "files": list(part.files)})
            if part.destination == "containers":
                self._add_to_images(req, res, part)
            else:
                self._add_to_disk(req, res, part)
        return record

    def _add_to_images(self, req: Request, res: Resolved, part: PatchPart) -> None:
        for image in part.images:
            if res.status == "MERGED":
                info = self.lookups.image(self.images[image].source)
                if info is not None and self._merged_in(res, info.created):
                    self._skip(req, f"merged {res.submitted:%Y-%m-%d %H:%M}, already in the upstream image "
                                    f"(built {info.created:%Y-%m-%d %H:%M})", image)
                    continue
            self.image_patches.setdefault(image, []).append((req, res, part))

    def _add_to_disk(self, req: Request, res: Resolved, part: PatchPart) -> None:
        side = part.destination
        if res.status == "MERGED":
            url = join_url(self.run.expand(self.opts.upstream.images_url), DISK_ARTIFACTS[side])
            built = self.lookups.artifact(url)
            if self._merged_in(res, built):
                self._skip(req, f"merged, already in the upstream {side} image ({DISK_ARTIFACTS[side]})")
                return
        self.disk[side].append((req, res, part))

    # -- render ----------------------------------------------------------------------------
    def _odl_release(self) -> str:
        """The OpenDaylight release to install in the opendaylight image, or "" to keep its own."""
        opts = self.run.deploy_settings.deploy_options
        if opts.sdn_controller != "opendaylight" or not opts.containers or "opendaylight" not in self.catalog.images:
            return ""
        release = self.catalog.odl_release(opts.odl_version)
        return "" if release == self.catalog.odl_shipped else release

    def render(self) -> None:
        plan = self.plan
        odl = self._odl_release()
        images = sorted(set(self.image_patches) | ({"opendaylight"} if odl else set()))
        rebuild: dict[str, Any] = {}
        missing: dict[str, str] = {}
        for image in images:
            upstream = self.images[image].source
            info = self.lookups.image(upstream)
            entries = self.image_patches.get(image, [])
            if info is None:
                missing[image] = str(upstream)
                for req, _res, _part in entries:
                    self._skip(req, f"image not found upstream at {upstream}", image)
                plan.items.append(Item(image, "missing upstream", str(upstream)))
                continue
            patches = []
            for n, (req, res, part) in enumerate(entries, 1):
                file = f"{n:02d}-{req.name}.patch"
                plan.files[f"containers/{image}/{file}"] = part.text.encode("utf-8", "surrogateescape")
                patches.append((ImagePatch(file, part.target_dir, req.project, req.change_id, res.revision,
                                           Path(req.path).name if req.path else ""), _entry(req, res)))
            base = str(self.images[image].target)
            image_odl = odl if image == "opendaylight" else ""
            steps = [step for step, _ in patches]
            labels = image_labels(str(upstream), steps, image_odl)
            plan.files[f"containers/{image}/Dockerfile"] = render_dockerfile(
                base, info.user, steps, labels, image_odl).encode()
            if image_odl:
                url = self.opts.patching.odl_repo_url.replace("{release}", image_odl)
                plan.files[f"containers/{image}/opendaylight.repo"] = render_odl_repo(image_odl, url).encode()
            work = self.opts.work_dir
            rebuild[image] = {
                "dockerfile": str(work / CONTAINERS_DIR / image / "Dockerfile"),
                "context": str(work / CONTAINERS_DIR / image),
                "from": base,
                "upstream": str(upstream),
                "user": info.user,
                "opendaylight": image_odl,
                "patches": [{**identity, "file": p.file, "target_dir": p.target_dir, "strip": p.strip,
                             "label": p.label} for p, identity in patches],
                "labels": [list(label) for label in labels],
                # Why only an engine can rebuild it ("" = patches only: the native builder can).
                "engine_only": f"reinstalls OpenDaylight {image_odl} with yum" if image_odl else "",
            }
            what = [p.label for p in steps] + ([f"OpenDaylight {image_odl}"] if image_odl else [])
            plan.items.append(Item(image, "to rebuild", "; ".join(what)))
            plan.rebuilds.append(f"{image}: rebuild with {'; '.join(what)}")
        disk: dict[str, list[dict[str, Any]]] = {}
        for side in SIDES:
            manifest = []
            for n, (req, res, part) in enumerate(self.disk[side], 1):
                file = f"{n:02d}-{req.name}.patch"
                plan.files[f"image_patches/{side}/{file}"] = part.text.encode("utf-8", "surrogateescape")
                manifest.append({**_entry(req, res), "file": file, "target_dir": part.target_dir, "strip": 1})
                plan.items.append(Item(f"{req.title}", f"{side} image", part.target_dir))
                plan.changes.append(f"{side} image: {req.title} → {part.target_dir}")
            plan.files[f"image_patches/{side}/manifest.json"] = (json.dumps(manifest, indent=2) + "\n").encode()
            disk[side] = manifest
        plan.data.update(rebuild=rebuild, missing_upstream=missing, disk_image=disk, skipped=self.skipped,
                         archive=str(self.opts.work_dir / ARCHIVE))


def make_plan(run: RunContext, gerrit: GerritClient, lookups: CachedLookups) -> Plan:
    """Resolve every requested patch, sort it, and render the outputs in memory."""
    planner = Planner(run, gerrit, lookups)
    records = []
    # A dry run asks an unreachable Gerrit once, then says what a real run would fetch from it.
    unreachable: GerritUnreachable | None = None
    waiting: list[Request] = []
    for req in requested(run):
        if unreachable is not None and not req.path:
            waiting.append(req)
            continue
        try:
            records.append(planner.add(req))
        except GerritUnreachable as exc:
            if not run.dry_run:
                raise
            unreachable = exc
            waiting.append(req)
        except (GerritError, RegistryError) as exc:
            if not run.dry_run:
                raise
            planner.unresolved.append(f"{req.title}: cannot plan it: {exc.message}")
    if unreachable is not None:
        projects = sorted({r.project.removeprefix("openstack/") for r in waiting})
        planner.unresolved[:0] = [
            f"Gerrit unreachable: {unreachable.reason}",
            f"a real run would fetch {len(waiting)} change(s): {', '.join(projects)}",
        ]
    try:
        planner.render()
    except RegistryError as exc:
        if not run.dry_run:
            raise
        planner.unresolved.append(f"images: cannot plan them: {exc.message}")
    planner.plan.changes += planner.unresolved
    planner.plan.data["patches"] = records
    planner.plan.files[ARCHIVE] = archive_bytes({k: v for k, v in planner.plan.files.items()
                                                 if k.startswith("containers/")})
    return planner.plan


def archive_bytes(files: dict[str, bytes]) -> bytes:
    """A reproducible ``tar.gz`` of ``files`` under ``containers/``: sorted, fixed times and owners."""
    names = {"containers/"} | {f"{p.rsplit('/', 1)[0]}/" for p in files}
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name in sorted(names | set(files)):
            info = tarfile.TarInfo(name.rstrip("/"))
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "root", "root"
            if name.endswith("/"):
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(files[name]), 0o644
                tar.addfile(info, io.BytesIO(files[name]))
    out = io.BytesIO()
    # No file name and mtime 0 in the gzip header, so equal trees give equal bytes.
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=9) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def _remove_stale(root: Path, keep: set[Path]) -> list[str]:
    """Delete files under ``root`` that the plan does not write, then empty folders."""
    removed = []
    if not root.is_dir():
        return removed
    for path in sorted(root.rglob("*"), reverse=True):
        if path.is_file() and path not in keep:
            path.unlink()
            removed.append(str(path))
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    return removed


def default_inspector(run: RunContext, configs: dict[str, Any] | None = None) -> Inspector:
    """Read upstream image configs with push-registry's clients (same TLS modes and credentials);
    ``configs``: the ones read before, by digest (a re-run GETs each manifest, not its config)."""
    clients = Clients(run.options, run.registry_address)
    return lambda ref: inspect_image(clients(ref.registry), ref, configs)


def patch_containers(
    run: RunContext,
    inspect: Inspector | None = None,
    artifact_time: Callable[[str], datetime | None] | None = None,
    gerrit: GerritClient | None = None,
) -> TargetResult:
    """The patch-containers target (injectable upstream lookups for tests and other registries)."""
    opts = run.options
    work = opts.work_dir
    gerrit = gerrit or GerritClient(opts.gerrit.url, work / GERRIT_CACHE, timeout=opts.gerrit.timeout,
                                    tries=opts.gerrit.tries, offline=opts.cache_only, write_cache=not run.dry_run)
    configs: dict[str, Any] = {}
    lookups = CachedLookups(work / LOOKUPS_CACHE, inspect or default_inspector(run, configs),
                            artifact_time or (lambda url: http_last_modified(url, opts.gerrit.timeout)),
                            offline=opts.cache_only, configs=configs)
    plan = make_plan(run, gerrit, lookups)
    fp = fingerprint({"files": {k: hashlib.sha256(v).hexdigest() for k, v in sorted(plan.files.items())},
                      "data": plan.data})
    if not run.dry_run:
        lookups.save()  # a cache: written when it learnt something (a config read for the first time)
    if run.up_to_date(TARGET, fp):
        return TargetResult(TARGET, Status.UP_TO_DATE, ["up to date"], plan.items)
    if run.dry_run:
        changes = (plan.rebuilds + plan.changes) or ["no patches: write an empty containers archive"]
        return TargetResult(TARGET, Status.PLANNED, changes + [f"write {ARCHIVE}"], plan.items)
    paths = {name: work / name for name in plan.files}
    keep = set(paths.values())
    removed = _remove_stale(work / CONTAINERS_DIR, keep) + _remove_stale(work / IMAGE_PATCHES_DIR, keep)
    written = [name for name, data in sorted(plan.files.items()) if write_if_changed(paths[name], data)]
    run.state.save(TARGET, fp, outputs=sorted(paths.values()), data=plan.data)
    changes = list(plan.changes)
    changes += [f"removed stale {p}" for p in removed]
    if plan.rebuilds:
        changes.insert(0, f"{len(plan.rebuilds)} images to rebuild")
    changes.append(f"wrote {len(written)} file(s); {ARCHIVE} {'rewritten' if ARCHIVE in written else 'unchanged'}")
    return TargetResult(TARGET, Status.CHANGED, changes, plan.items)
