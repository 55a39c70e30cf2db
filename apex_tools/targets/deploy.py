"""deploy: build the ``openstack overcloud deploy`` command and its files, check everything the
long step depends on, then run the playbooks on the undercloud.

Check: the inputs the other targets wrote, the undercloud (does it answer, has it TripleO, what
is the overcloud stack's status). The recorded fingerprint and the stack's status decide:
complete and unchanged is up to date; changed inputs plan a stack update, naming what changed.
An undercloud without TripleO (the ``local`` driver on a plain host) gets everything up to and
including the pre-flight, and the target ends ``ready``: the command is written, not run.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from apex_tools.core.config import settings_path
from apex_tools.core.errors import ApexError, UndercloudError
from apex_tools.core.reference import ImageRef
from apex_tools.core.run import Item, RunContext, Status, TargetResult
from apex_tools.trust.provenance import update_provenance
from apex_tools.core.state import Record, file_stamp, fingerprint, keyed_digest, write_if_changed
from apex_tools.core.workdir import (
    CEPH_LOOP,
    CUSTOM_IMAGE,
    DEPLOY,
    DEPLOY_COMMAND,
    DEPLOY_LOG,
    INSTACKENV,
    PARAMETER_FILE,
    PUSH_REGISTRY,
    STACK_FAILURES,
    STORAGE_ENV,
    UPLOAD_IMAGES,
    artifact_dir,
)
from apex_tools.overcloud import preflight
from apex_tools.overcloud.command import THT_ROOT, DeployPlan, deploy_files, libvirt_type, local_files, tht_environments
from apex_tools.overcloud.inventory import Inventory, load_inventory, scale_of
from apex_tools.overcloud.stack import COMPLETE, STACK, stack_home, stack_status, undercloud_templates
from apex_tools.registry.client import RegistryClient
from apex_tools.registry.clients import Clients
from apex_tools.undercloud.base import Undercloud
from apex_tools.undercloud.drivers import driver_for
from apex_tools.undercloud.playbook import PlaybookError

log = logging.getLogger(__name__)

TARGET = DEPLOY
PREPARE_PLAYBOOK = "prepare_overcloud_containers.yaml"
DEPLOY_PLAYBOOK = "deploy_overcloud.yaml"
TAIL = 20
DEPLOYED, READY = "deployed", "ready"


@dataclass
class _Deploy:
    """What the check found: the files to write, the inputs' digests, the undercloud's state."""

    plan: DeployPlan
    inventory: Inventory
    files: dict[str, str]
    inputs: dict[str, str]
    fp: str
    undercloud: Undercloud
    answers: list[preflight.Problem]
    tripleo: bool
    tht_source: str
    status: str | None = None
    home: str = ""


def _missing_inputs(run: RunContext) -> list[str]:
    """What the other targets should have written, named with the target that writes it."""
    work = run.options.work_dir
    missing = []
    if not (work / PARAMETER_FILE).is_file():
        missing.append(f"{work / PARAMETER_FILE} (push-registry)")
    if run.deploy_settings.deploy_options.ceph and not (work / STORAGE_ENV).is_file():
        missing.append(f"{work / STORAGE_ENV} (ceph-loop)")
    if not (work / CUSTOM_IMAGE).is_file():
        missing.append(f"{work / CUSTOM_IMAGE} (ceph-loop)")
    return missing


def upload_images(run: RunContext) -> list[Path]:
    """The images ``openstack overcloud image upload`` takes: ceph-loop's qcow2, the upstream kernels."""
    cache = artifact_dir(run.options, run.os_version)
    return [run.options.work_dir / CUSTOM_IMAGE] + [cache / name for name in UPLOAD_IMAGES]


def _check(run: RunContext) -> _Deploy:
    """Render every file in memory, fingerprint the inputs, ask the undercloud what it has."""
    options = run.options
    ds, ns = run.deploy_settings, run.network_settings
    inventory = load_inventory(settings_path(options.inventory_file, "inventory"))
    scale = scale_of(inventory, ds.global_params.ha_enabled)
    undercloud = driver_for(options, run.registry_address)
    answers, probe = preflight.check_undercloud(undercloud, THT_ROOT)
    tripleo = probe.tripleo
    tht, tht_source = undercloud_templates(undercloud, run.os_version, options.work_dir, probe.templates)
    virtual = options.ceph.virtual
    plan = DeployPlan(ds, ns, scale, tht, virtual, libvirt_type(options.deploy.libvirt_type, virtual),
                      options.deploy.timeout, ceph=ds.deploy_options.ceph)
    source = str(settings_path(options.network_settings, "network"))
    files = deploy_files(plan, inventory, source)
    work = options.work_dir

    def _digest(data: bytes | str) -> str:
        # Keyed: instackenv.json holds the IPMI passwords, and this record is readable.
        return keyed_digest(work, data, create=not run.dry_run)

    inputs = {name: _digest(text) for name, text in files.items()}
    for name in (PARAMETER_FILE, STORAGE_ENV):
        if name != STORAGE_ENV or plan.ceph:
            path = work / name
            inputs[name] = _digest(path.read_bytes()) if path.is_file() else "missing"
    pushed = run.state.load(PUSH_REGISTRY)
    inputs["registry images"] = pushed.fingerprint if pushed else "no push-registry record"
    custom = run.state.load(CEPH_LOOP)
    image_fp = custom.data.get("image_fingerprint") if custom else None
    # ceph-loop's identity of the image, and the file as it is (replaced by hand, it is noticed).
    inputs[CUSTOM_IMAGE] = f"{image_fp} {file_stamp(work / CUSTOM_IMAGE)}"
    for path in upload_images(run)[1:]:
        inputs[path.name] = str(file_stamp(path))
    inputs["tripleo-heat-templates"] = tht_source
    fp = fingerprint({"inputs": inputs, "tripleo": tripleo})
    return _Deploy(plan, inventory, files, inputs, fp, undercloud, answers, tripleo, tht_source)


def _why(record: Record | None, check: _Deploy, force: bool = False) -> str:
    if record is None:
        return "first run"
    before = record.data.get("inputs", {})
    changed = [name for name, digest in check.inputs.items() if before.get(name) != digest]
    if changed:
        return f"changed: {', '.join(changed)}"
    return "--force" if force else "inputs unchanged"


def _no_tripleo(check: _Deploy) -> str:
    return (f"the undercloud ({check.undercloud.name} driver) has no TripleO (`openstack overcloud deploy` is not "
            "available there)")


def deploy(run: RunContext) -> TargetResult:
    """Write the command and its files, run the pre-flight, then deploy or update the stack."""
    missing = _missing_inputs(run)
    if missing:
        if run.dry_run:
            return TargetResult(TARGET, Status.PLANNED, [f"deploy once these exist: {', '.join(missing)}"])
        raise UndercloudError(f"deploy inputs are missing: {', '.join(missing)}",
                              "run the targets named in brackets first (or `apex deploy`, which runs them all)")
    check = _check(run)
    record = run.state.load(TARGET)
    same = (not run.force and record is not None and record.fingerprint == check.fp and record.outputs_intact())
    if check.tripleo:
        check.home = stack_home(check.undercloud, run.options.undercloud.home)
        check.status = stack_status(check.undercloud, f"{check.home}/stackrc")
        if same and record is not None and record.data.get("outcome") == DEPLOYED and check.status in COMPLETE:
            return TargetResult(TARGET, Status.UP_TO_DATE, [f"up to date (stack {STACK} {check.status})"])
    elif same and record is not None and record.data.get("outcome") == READY:
        return TargetResult(TARGET, Status.UP_TO_DATE,
                            [f"up to date (ready: {DEPLOY_COMMAND}; not run: {_no_tripleo(check)})"])

    plan = _plan(run, check, record)
    if run.dry_run:
        return TargetResult(TARGET, Status.PLANNED, plan)
    if check.status is not None and check.status.endswith("_IN_PROGRESS"):
        raise UndercloudError(f"stack {STACK} is {check.status} on the undercloud",
                              "wait for it to finish (openstack stack list), then run deploy again")
    return _apply(run, check)


def _plan(run: RunContext, check: _Deploy, record: Record | None) -> list[str]:
    work = run.options.work_dir
    changed = [name for name, text in check.files.items() if _current(work / name) != text]
    plan = [f"write {', '.join(changed)} in {work}"] if changed else []
    plan.append(f"pre-flight: environment files, image parameters and images (against {check.tht_source}), "
                "the undercloud, the inventory's scale")
    if not check.tripleo:
        plan.append(f"ready: {DEPLOY_COMMAND} is written but not run: {_no_tripleo(check)}")
    elif check.status is None:
        plan.append(f"stack create: no {STACK} stack on the undercloud yet ({_why(record, check, run.force)})")
    elif check.status in COMPLETE:
        plan.append(f"stack update: {_why(record, check, run.force)}")
    else:
        plan.append(f"stack update: the stack is {check.status} ({_why(record, check, run.force)})")
    return plan


def _sha256(text: str) -> str:
    """The plain sha256 of a file that holds no secret (the deploy command), for provenance."""
    return hashlib.sha256(text.encode()).hexdigest()


def _current(path: Path) -> str | None:
    try:
        return path.read_text()
    except (FileNotFoundError, UnicodeDecodeError):
        return None


def _preflight(run: RunContext, check: _Deploy) -> list[str]:
    """Every check; raise listing every problem. Returns what was checked."""
    work = run.options.work_dir
    names = local_files(check.plan)
    env_paths = {name: work / name for name in names}
    problems = preflight.check_environment_files(env_paths, tht_environments(check.plan), check.plan.tht)
    params: dict[str, str] = {}
    try:
        params = preflight.image_parameters(work / PARAMETER_FILE)
    except (OSError, ValueError) as exc:
        # A file that does not parse was already reported by the environment-file check.
        log.debug("cannot read %s: %s", PARAMETER_FILE, exc)
    problems += preflight.check_parameters(params, check.plan.tht, PARAMETER_FILE)
    problems += check.answers
    refs = []
    for name, value in params.items():
        try:
            refs.append(ImageRef.parse(value))
        except ApexError as exc:
            problems.append(preflight.Problem("images", f"{PARAMETER_FILE}: {name}: {value!r}: {exc.message}",
                                              "re-run push-registry"))
    if refs:
        with check.undercloud.reachable_registry() as reachable:
            clients = Clients(run.options, reachable)

            def client_for(ref: ImageRef) -> tuple[RegistryClient, str]:
                """The client reaching ``ref``'s registry from here, and how to name it in a problem."""
                if ref.registry == check.undercloud.registry_address:
                    seen = ref.registry if reachable == ref.registry else f"{ref.registry}, reached at {reachable}"
                    return clients(reachable), seen
                return clients(ref.registry), ref.registry

            problems += preflight.check_images(refs, client_for, run.options.jobs)
    problems += preflight.check_scale(check.inventory, check.plan.scale)
    problems += preflight.check_files(upload_images(run), "image", "run fetch-images and ceph-loop")
    preflight.raise_problems(problems)
    return [f"{len(env_paths)} environment files parse; {len(tht_environments(check.plan))} THT environments exist",
            f"{len(params)} image parameters exist in {check.tht_source}",
            f"{len(set(refs))} images pullable (manifests and blobs)",
            f"undercloud answers ({check.undercloud.name})",
            f"scale {check.plan.scale.control} control + {check.plan.scale.compute} compute fits the inventory "
            f"({len(check.inventory.nodes)} nodes)"]


def _apply(run: RunContext, check: _Deploy) -> TargetResult:
    work = run.options.work_dir
    changes: list[str] = []
    items: list[Item] = []
    wrote = []
    for name, text in check.files.items():
        written = write_if_changed(work / name, text, mode=0o600 if name == INSTACKENV else 0o644)
        if written:
            wrote.append(name)
        items.append(Item(name, "written" if written else "up to date", str(work / name)))
    if wrote:  # one line, named relative to the work dir (each file is an item: --verbose)
        changes.append(f"wrote {', '.join(wrote)}")
    passed = _preflight(run, check)
    items += [Item("pre-flight", "ok", line) for line in passed]
    # provenance.json is completed with the command that deploys what it lists.
    if update_provenance(work, "deploy", {"command": DEPLOY_COMMAND,
                                          "sha256": _sha256(check.files[DEPLOY_COMMAND])}):
        changes.append("completed provenance.json with the deploy command's sha256")
    outputs = [work / name for name in check.files]
    data = {"inputs": check.inputs, "tht": check.tht_source, "libvirt_type": check.plan.libvirt_type}
    if not check.tripleo:
        run.state.save(TARGET, check.fp, outputs=outputs, data={**data, "outcome": READY})
        changes.append(f"ready: {DEPLOY_COMMAND} (in the work dir); not run: {_no_tripleo(check)}")
        return TargetResult(TARGET, Status.READY, changes, items)
    action = "stack create" if check.status is None else "stack update"
    _run_playbooks(run, check)
    status = stack_status(check.undercloud, f"{check.home}/stackrc")
    run.state.save(TARGET, check.fp, outputs=outputs, data={**data, "outcome": DEPLOYED, "stack_status": status})
    changes.append(f"{action}: stack {STACK} {status}")
    return TargetResult(TARGET, Status.CHANGED, changes, items)


def _run_playbooks(run: RunContext, check: _Deploy) -> None:
    """prepare_overcloud_containers.yaml, then deploy_overcloud.yaml; a failed deploy fetches its logs."""
    work = run.options.work_dir
    user = run.options.undercloud.user
    common = {"apex_work_dir": str(work), "stack_home": check.home, "stack_user": user}
    check.undercloud.run_playbook(PREPARE_PLAYBOOK, common, work / "prepare_overcloud_containers.log")
    for stale in (DEPLOY_LOG, STACK_FAILURES):
        (work / stale).unlink(missing_ok=True)
    ds = run.deploy_settings
    extra = {
        **common,
        "local_files": [DEPLOY_COMMAND, INSTACKENV, *local_files(check.plan)],
        "upload_images": [{"src": str(p), "name": p.name} for p in upload_images(run)],
        "baremetal": not check.plan.virtual,
        "introspect": ds.global_params.introspect,
    }
    # The playbook's own limit is the deploy's timeout plus the uploads and node registration.
    limit = run.options.deploy.timeout * 60 + 3600
    try:
        check.undercloud.run_playbook(DEPLOY_PLAYBOOK, extra, work / "deploy_overcloud.log", timeout=limit)
    except PlaybookError as exc:
        raise UndercloudError(_failure_report(work, exc), f"the whole output is in {work / DEPLOY_LOG} and "
                              f"{work / 'deploy_overcloud.log'}") from None


def _tail(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").rstrip().splitlines()[-TAIL:]
    except FileNotFoundError:
        return [f"({path.name} was not fetched)"]


def _failure_report(work: Path, exc: PlaybookError) -> str:
    """The failed step, the tail of the stack's failures and of the deploy's output."""
    lines = [exc.message.splitlines()[0]]
    if (work / STACK_FAILURES).exists() or (work / DEPLOY_LOG).exists():
        lines.append(f"openstack stack failures list {STACK} --long ({work / STACK_FAILURES}), last lines:")
        lines += [f"  {line}" for line in _tail(work / STACK_FAILURES)]
        lines.append(f"openstack overcloud deploy output ({work / DEPLOY_LOG}), last lines:")
        lines += [f"  {line}" for line in _tail(work / DEPLOY_LOG)]
    else:
        lines += exc.message.splitlines()[1:]
    return "\n  ".join(lines)
