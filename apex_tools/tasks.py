"""apex-tools targets: deploy a containerized TripleO overcloud step by step, idempotently.

Each target can run on its own; `deploy` runs them all in order. The same collection is
`invoke <target>` (from the checkout's tasks.py), `apex <target>` and
`docker run apex-tools <target>`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from invoke import Collection, Config, Context, task
from invoke.exceptions import Exit

from apex_tools.core.config import KNOWN_KEYS, EffectiveConfig, Layer, effective_config, env_name, settings_path
from apex_tools.core.console import EXIT_FAILED, EXIT_INTERNAL, EXIT_SETTINGS, Output, internal_error, one_line
from apex_tools.core.errors import ApexError, expected_os_error
from apex_tools.core.run import RunContext, Status, TargetResult
from apex_tools.core.settings import load_deploy_settings
from apex_tools.core.state import work_dir_lock
from apex_tools.targets import FLOW, registry, sweep_leftovers

if TYPE_CHECKING:
    from apex_tools.lab.stand import StandIn

# Top-level keys of Invoke's own that may sit in the same config file as ours.
INVOKE_KEYS = frozenset(Config.global_defaults())


def invoke_file_layers(config: Config) -> list[Layer]:
    """The config files Invoke loaded (system, user, project, ``-f`` runtime), lowest first."""
    layers = []
    for level in ("system", "user", "project", "runtime"):
        data = getattr(config, f"_{level}", None) or {}
        path = getattr(config, f"_{level}_path", None)
        if data:
            layers.append(Layer(f"{level} file {path}" if path else f"{level} file", data))
    return layers


def options_from(config: Config, environ: Mapping[str, str], flags: Mapping[str, Any] | None = None,
                 extra: Sequence[Layer] = ()) -> EffectiveConfig:
    """The effective configuration of a task: Invoke's files (then ``extra`` files), ``APEX_*``,
    then the task's flags."""
    return effective_config([*invoke_file_layers(config), *extra], environ, flags, INVOKE_KEYS)


COMMON_HELP = {
    "force": "Redo the target even when its inputs have not changed.",
    "dry_run": "Print the plan (what would change and why) and touch nothing.",
    "verbose": "Log debug details to the terminal (the log file always has them).",
    "quiet": "Only warnings, errors and the summary.",
    "json": "Print the summary as JSON instead of a table.",
}


class Stopped(BaseException):
    """SIGTERM or SIGINT arrived: unwinds the run (staging folders removed, children ended, lock released)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def ended_by_signals() -> Iterator[None]:
    """Turn SIGTERM and SIGINT into ``Stopped`` for the block, so cleanups run; exit 128+signal."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread; a caller elsewhere keeps its own
        return

    def stop(signum: int, _frame: object) -> None:
        raise Stopped(signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    except Stopped as exc:
        raise Exit(f"apex: stopped by {signal.Signals(exc.signum).name}; the next run continues where this "
                   "one stopped", code=128 + exc.signum) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _help(**extra: str) -> dict[str, str]:
    return {**COMMON_HELP, **extra}


def run_targets(
    c: Context,
    names: Sequence[str],
    *,
    force: bool,
    dry_run: bool,
    verbose: bool,
    quiet: bool,
    json: bool = False,
    flags: dict[str, Any] | None = None,
    layers: Sequence[Layer] = (),
    recreate: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> list[TargetResult]:
    """Run ``names`` in order under the work-dir lock, stop at the first failure, print the summary."""
    try:
        options = options_from(c.config, os.environ, flags, layers).options
        run = RunContext(options, force=force, dry_run=dry_run, recreate=recreate)
        # Every target reads these: a bad file stops the run before anything is touched.
        run.deploy_settings, run.network_settings, run.patches
        if "deploy" in names:  # the inventory too, and HA's three controllers, before hours of work
            from apex_tools.overcloud.inventory import load_inventory, scale_of

            scale_of(load_inventory(settings_path(options.inventory_file, "inventory")),
                     run.deploy_settings.global_params.ha_enabled)
    except ApexError as exc:
        raise Exit(f"apex: {exc}", code=EXIT_SETTINGS) from None
    # A dry run touches nothing, not even the log file or the lock.
    out = Output(verbose, quiet, None if dry_run else options.work_dir / "apex.log")
    run.progress = out.progress
    targets = {**registry(n for n in names if n not in (extra or {})), **(extra or {})}
    results: list[TargetResult] = []
    error: ApexError | None = None
    bug: Exception | None = None
    lock = contextlib.nullcontext() if dry_run else work_dir_lock(options.work_dir, options.lock_timeout)
    try:
        with lock, ended_by_signals():
            if not dry_run:
                for line in sweep_leftovers(options):
                    out.log.warning("%s", line)
            for name in names:
                started = time.monotonic()
                try:
                    result = targets[name](run)
                except ApexError as exc:
                    result, error = TargetResult(name, Status.FAILED, [exc.message.splitlines()[0]]), exc
                except Exception as exc:  # noqa: BLE001 - a bug: one line here, the traceback in the log
                    expected = expected_os_error(exc, options.work_dir)  # disk full, read-only: not a bug
                    if expected is not None:
                        result, error = TargetResult(name, Status.FAILED, [expected.message]), expected
                    else:
                        result, bug = TargetResult(name, Status.FAILED, [f"internal error: {one_line(exc)}"]), exc
                result.seconds = time.monotonic() - started
                results.append(result)
                out.log.info("%s: %s", name, result.status.value)
                if result.failed:
                    break
    except ApexError as exc:  # the lock, before any target ran
        error = exc
    except OSError as exc:  # taking the lock on a full or read-only work dir
        error = expected_os_error(exc, options.work_dir)
        if error is None:
            raise
    if results:
        out.summary(results, as_json=json)
    if bug is not None:
        raise Exit(internal_error(bug, out.log_file, verbose), code=EXIT_INTERNAL)
    if error is not None:
        out.log.debug("failure detail", exc_info=error)
        raise Exit(f"apex: {error}", code=EXIT_FAILED)
    failed = next((r for r in results if r.failed), None)
    if failed is not None:
        # The last line names what failed and why (its last change line), not just "see above".
        what = failed.changes[-1].splitlines()[0] if failed.changes else "failed (see the summary above)"
        raise Exit(f"apex: {failed.target}: {what}", code=EXIT_FAILED)
    return results


OFFLINE_HELP = "Disconnected: read only the cache, the work dir and the local registry (implies --no-fetch)."


@task(help=_help(no_fetch="Use the cached images only; never contact upstream.", offline=OFFLINE_HELP))
def fetch_images(
    c: Context,
    force: bool = False,
    no_fetch: bool = False,
    offline: bool = False,
    dry_run: bool = False,
    verbose: bool = False,
    quiet: bool = False,
    json: bool = False,
) -> None:
    """Download the upstream RDO images when upstream changed, cached per OpenStack version."""
    run_targets(c, ["fetch-images"], force=force, dry_run=dry_run, verbose=verbose, quiet=quiet, json=json,
                flags={"no_fetch": no_fetch or None, "offline": offline or None})


@task(help=_help(recreate="libvirt: destroy, undefine and rebuild an undercloud VM whose definition changed "
                          "(its volume is removed)."))
def undercloud(
    c: Context, force: bool = False, recreate: bool = False, dry_run: bool = False, verbose: bool = False,
    quiet: bool = False, json: bool = False,
) -> None:
    """Create, start and configure the undercloud (libvirt VM, existing host over SSH, or this host)."""
    run_targets(c, ["undercloud"], force=force, dry_run=dry_run, verbose=verbose, quiet=quiet, json=json,
                recreate=recreate)


@task(help=_help(no_fetch="Use the cached Gerrit patches and upstream lookups only; never contact them.",
                 offline=OFFLINE_HELP))
def patch_containers(
    c: Context, force: bool = False, no_fetch: bool = False, offline: bool = False, dry_run: bool = False,
    verbose: bool = False, quiet: bool = False, json: bool = False,
) -> None:
    """Sort overcloud patches; write a Dockerfile per image to rebuild and the patches archive."""
    run_targets(c, ["patch-containers"], force=force, dry_run=dry_run, verbose=verbose, quiet=quiet, json=json,
                flags={"no_fetch": no_fetch or None, "offline": offline or None})


@task(help=_help())
def ceph_loop(
    c: Context, force: bool = False, dry_run: bool = False, verbose: bool = False, quiet: bool = False,
    json: bool = False,
) -> None:
    """Customize the overcloud image (Ceph loop device, disk-image patches); write the storage env."""
    run_targets(c, ["ceph-loop"], force=force, dry_run=dry_run, verbose=verbose, quiet=quiet, json=json)


@task(help=_help(offline=OFFLINE_HELP))
def push_registry(
    c: Context, force: bool = False, offline: bool = False, dry_run: bool = False, verbose: bool = False,
    quiet: bool = False, json: bool = False,
) -> None:
    """Mirror the deployment's images to the local registry, rebuild patched ones as :apex."""
    run_targets(c, ["push-registry"], force=force, dry_run=dry_run, verbose=verbose, quiet=quiet, json=json,
                flags={"offline": offline or None})


@task(help=_help(
    force="Redo every target of the chain, not only the out-of-date ones.",
    dry_run="Print the whole chain's plan and touch nothing.",
    no_fetch="Use the cached images only; never contact upstream.",
    lab="The lab: use config/lab.yaml (as -f would) and bring the lab up first when it is not.",
    offline=OFFLINE_HELP,
    vm="With --lab: the undercloud is a qemu VM on this machine (config/lab-vm.yaml; libvirt driver).",
    recreate="libvirt: destroy, undefine and rebuild an undercloud VM whose definition changed.",
))
def deploy(
    c: Context,
    force: bool = False,
    no_fetch: bool = False,
    offline: bool = False,
    dry_run: bool = False,
    verbose: bool = False,
    quiet: bool = False,
    json: bool = False,
    lab: bool = False,
    vm: bool = False,
    recreate: bool = False,
) -> None:
    """Run every target in order (each at most once), then deploy the overcloud."""
    if vm and not lab:
        raise Exit("apex: --vm goes with --lab (the VM lab)", code=EXIT_SETTINGS)
    layers = _lab_layers(c, vm) if lab else []
    if lab and not dry_run:
        _lab_up(c, quiet=quiet, stream=sys.stderr if json else sys.stdout, vm=vm)
    run_targets(c, [*FLOW, "deploy"], force=force, dry_run=dry_run, verbose=verbose, quiet=quiet, json=json,
                flags={"no_fetch": no_fetch or None, "offline": offline or None}, layers=layers, recreate=recreate)


def _lab_layers(c: Context, vm: bool = False) -> list[Layer]:
    """config/lab.yaml, and for the VM lab config/lab-vm.yaml and the keys derived from the work dir."""
    # Imported here: the lab's library is only loaded by the lab's tasks.
    from apex_tools.lab.stand import lab_layer, vm_derived_layer, vm_layer

    try:
        layers = [lab_layer()]
        if vm:
            layers.append(vm_layer())
            layers.append(vm_derived_layer(options_from(c.config, os.environ, extra=layers).options))
    except ApexError as exc:
        raise Exit(f"apex: {exc}", code=EXIT_SETTINGS) from None
    return layers


def _lab_options(c: Context, vm: bool = False) -> Any:
    try:
        return options_from(c.config, os.environ, extra=_lab_layers(c, vm)).options
    except ApexError as exc:
        raise Exit(f"apex: {exc}", code=EXIT_SETTINGS) from None


def _print_stand_ins(rows: Sequence[StandIn], stream: Any) -> None:
    width = max(len(r.name) for r in rows)
    for row in rows:
        detail = f" ({row.detail})" if row.detail else ""
        print(f"lab: {row.name:<{width}}  {row.address}  {row.status}{detail}", file=stream)


def _lab_up(c: Context, quiet: bool = False, stream: Any = None, vm: bool = False) -> None:
    from apex_tools.lab.stand import lab_up

    options = _lab_options(c, vm)
    try:
        # Under the work dir's lock: two runs must not both start the same stand-in.
        with work_dir_lock(options.work_dir, options.lock_timeout):
            rows = lab_up(RunContext(options), vm=vm)
    except ApexError as exc:
        raise Exit(f"apex: lab up: {exc}", code=1) from None
    if not quiet:
        _print_stand_ins(rows, stream or sys.stdout)


@task(name="up", help={"quiet": "Print nothing unless something fails.",
                       "vm": "Also the VM lab's undercloud image and libvirtd (config/lab-vm.yaml)."})
def lab_up_task(c: Context, quiet: bool = False, vm: bool = False) -> None:
    """Start the lab's stand-ins (image mirror, upstream registry with its images); running ones are left alone."""
    _lab_up(c, quiet=quiet, vm=vm)


@task(name="down", help={"quiet": "Print nothing unless something fails."})
def lab_down_task(c: Context, quiet: bool = False) -> None:
    """Stop the lab's stand-ins and the local registry this work dir started."""
    from apex_tools.lab.stand import lab_down

    options = _lab_options(c)
    try:
        with work_dir_lock(options.work_dir, options.lock_timeout):
            rows = lab_down(options)
    except ApexError as exc:
        raise Exit(f"apex: lab down: {exc}", code=1) from None
    if not quiet:
        _print_stand_ins(rows, sys.stdout)


@task(name="status")
def lab_status_task(c: Context) -> None:
    """List the lab's stand-ins (running or not) and, for the VM lab, libvirtd and the VM with its address."""
    from apex_tools.lab.stand import lab_status

    try:
        rows = lab_status(_lab_options(c))
    except ApexError as exc:
        raise Exit(f"apex: lab status: {exc}", code=1) from None
    _print_stand_ins(rows, sys.stdout)


@task(name="config", help={"key": "Show only this dotted key (e.g. registry.address)."})
def show_config(c: Context, key: str = "") -> None:
    """Print the effective configuration and where each value came from."""
    try:
        effective = options_from(c.config, os.environ)
    except ApexError as exc:
        raise Exit(f"apex: {exc}", code=EXIT_SETTINGS) from None
    keys = [key] if key else list(KNOWN_KEYS)
    if key and key not in KNOWN_KEYS:
        raise Exit(f"apex: unknown key {key!r}; one of: {', '.join(KNOWN_KEYS)}", code=EXIT_SETTINGS)
    width = max(len(k) for k in keys)
    derived = _release_defaults(effective)
    if not key:
        print(_project_file_line(c.config))
    for name in keys:
        value, source = effective.values[name], effective.sources[name]
        if name.endswith("password") and value:
            value = "********"  # set, but never shown
        if value == "" and name in derived:
            value, source = derived[name]
        print(f"{name:<{width}}  {value!s:<40}  # {source}  (env {env_name(name)})")


def _project_file_line(config: Config) -> str:
    """Which project file (``apex.yaml`` in the working directory) this run read, or that none is there."""
    path = getattr(config, "_project_path", None)
    if path:
        return f"# project file: {path}"
    return f"# project file: none (no apex.yaml or apex.yml in {os.getcwd()})"


def _release_defaults(effective: EffectiveConfig) -> dict[str, tuple[str, str]]:
    """Key → (effective value, source) for the empty keys that mean "the release's" (the Ceph image)."""
    from apex_tools.catalog.images import ceph_defaults_shown

    try:
        os_version = load_deploy_settings(settings_path(effective.options.deploy_settings, "deploy")).os_version
        shown = ceph_defaults_shown(os_version)
    except ApexError:
        return {}  # unreadable deploy settings: show the raw "" rather than fail `apex config`
    return {k: (v, f"default: {os_version}'s (tripleo-common)") for k, v in shown.items()}


@task(help={"json": "Print provenance.json as it is instead of the table."})
def report(c: Context, json: bool = False) -> None:
    """Show where everything the overcloud runs came from (work_dir/provenance.json)."""
    from apex_tools.trust.provenance import PROVENANCE_FILE, load_provenance
    from apex_tools.trust.report import report_lines

    try:
        work_dir = options_from(c.config, os.environ).options.work_dir
        data = load_provenance(work_dir)
    except ApexError as exc:
        raise Exit(f"apex: {exc}", code=EXIT_FAILED) from None
    print((work_dir / PROVENANCE_FILE).read_text() if json else "\n".join(report_lines(data)), end="\n" * (not json))


BUNDLE_HELP = {"path": "The bundle as a folder (an OCI image layout).", "tar": "The bundle as one tar file."}


def _path(value: str) -> Path | None:
    return Path(value).absolute() if value else None


@task(name="export", help=_help(**BUNDLE_HELP, since="A bundle the other side already imported: write only "
                                                     "what it lacks (a differential bundle)."))
def bundle_export_task(
    c: Context, path: str = "", tar: str = "", since: str = "", force: bool = False, dry_run: bool = False,
    verbose: bool = False, quiet: bool = False, json: bool = False,
) -> None:
    """Write the deployment's images, disk images and patches into a bundle for a disconnected site.

    Runs fetch-images and patch-containers first."""
    from apex_tools.targets.bundle_export import bundle_export

    def export(run: RunContext) -> TargetResult:
        return bundle_export(run, _path(path), _path(tar), _path(since))

    run_targets(c, ["fetch-images", "patch-containers", "bundle-export"], force=force, dry_run=dry_run,
                verbose=verbose, quiet=quiet, json=json, extra={"bundle-export": export})


@task(name="import", help=_help(**BUNDLE_HELP))
def bundle_import_task(
    c: Context, path: str = "", tar: str = "", force: bool = False, dry_run: bool = False, verbose: bool = False,
    quiet: bool = False, json: bool = False,
) -> None:
    """Verify a bundle and load it (local registry, image cache, work dir) with no network."""
    from apex_tools.targets.bundle_import import bundle_import

    def load(run: RunContext) -> TargetResult:
        return bundle_import(run, _path(path), _path(tar))

    run_targets(c, ["bundle-import"], force=force, dry_run=dry_run, verbose=verbose, quiet=quiet, json=json,
                extra={"bundle-import": load})


lab_ns = Collection("lab", lab_up_task, lab_down_task, lab_status_task)
bundle_ns = Collection("bundle", bundle_export_task, bundle_import_task)
ns = Collection(fetch_images, undercloud, patch_containers, ceph_loop, push_registry, deploy, show_config, report,
                lab_ns, bundle_ns)
# Long flags only: automatic short flags differ from task to task and clash with core ones.
ns.configure({"tasks": {"auto_dash_names": True}})
for _task in [*ns.tasks.values(), *lab_ns.tasks.values(), *bundle_ns.tasks.values()]:
    _task.auto_shortflags = False
