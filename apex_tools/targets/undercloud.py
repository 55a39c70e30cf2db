"""The undercloud target: create and start the undercloud (its driver decides how), reach it over
SSH, check it has what TripleO needs, and configure it with ``configure_undercloud.yaml``.

Check: the driver's provisioning plan (libvirt: the domain definition's fingerprint against the
record; a changed one stops with the difference unless ``--recreate``), the bounded SSH wait,
what the undercloud lacks, whether it reports TripleO installed. The playbook is skipped on a
re-run when its inputs are unchanged and the undercloud reports installed.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from pathlib import Path
from typing import Any

from apex_tools.core.errors import UndercloudError
from apex_tools.core.run import Item, RunContext, Status, TargetResult
from apex_tools.core.settings import NetworkSettings
from apex_tools.core.state import fingerprint
from apex_tools.core.workdir import CONFIGURE_LOG, INSTALL_LOG, UNDERCLOUD, UNDERCLOUD_DIR
from apex_tools.undercloud.base import SSHUndercloud, Undercloud
from apex_tools.undercloud.drivers import driver_for
from apex_tools.trust.node import node_files
from apex_tools.undercloud.playbook import playbook_path

LOG = logging.getLogger(__name__)

TARGET = UNDERCLOUD
PLAYBOOK = "configure_undercloud.yaml"


def configure_vars(run: RunContext, driver: Undercloud) -> dict[str, Any]:
    """The playbook's extra vars, from the network settings and the options (Apex's ``generate_config``)."""
    ns: NetworkSettings = run.network_settings
    admin = ns.admin
    ip = admin.installer_vm.ip
    gateway = admin.gateway or ip
    return {
        "local_ip": f"{ip}/{admin.cidr.prefixlen}",
        "undercloud_hostname": f"undercloud.{ns.domain_name}",
        "ntp_server": ns.ntp[0] if ns.ntp else "",
        "ctlplane": {
            "cidr": str(admin.cidr),
            "gateway": str(gateway),
            "dhcp_start": str(admin.dhcp_range[0]),
            "dhcp_end": str(admin.dhcp_range[1]),
            "inspection_iprange": f"{admin.introspection_range[0]},{admin.introspection_range[1]}",
        },
        "registry": driver.registry_remote,
        "ceph_ansible_dir": run.options.undercloud.ceph_ansible_dir,
        # The undercloud routes the admin network out when it is that network's gateway (IPv4 only).
        "nat": gateway == ip and ip.version == 4,
        "nat_cidr": str(admin.cidr),
        "install_log_dest": str(run.options.work_dir / UNDERCLOUD_DIR / INSTALL_LOG),
        # Its podman requires this deployment's signatures too (nothing when signing is off).
        "containers_trust": {path: content.decode() for path, content in
                             node_files(run.options, run.registry_address, create=not run.dry_run).items()},
        **({"home": run.options.undercloud.home} if run.options.undercloud.home else {}),
    }


def _playbook_digest() -> str:
    return "sha256:" + hashlib.sha256(playbook_path(PLAYBOOK).read_bytes()).hexdigest()


def undercloud(run: RunContext) -> TargetResult:
    """Provision (driver), wait for SSH, check, configure; "up to date" when nothing changed."""
    try:
        return _undercloud(run)
    except UndercloudError as exc:
        if not run.dry_run:
            raise
        # A dry run shows the whole chain's plan: where a real run would stop is part of it.
        return TargetResult(TARGET, Status.PLANNED, [f"a real run stops here: {exc.message.splitlines()[0]}"])


def _undercloud(run: RunContext) -> TargetResult:
    driver = driver_for(run.options, run.registry_address, run.network_settings, run.os_version)
    record = run.state.load(TARGET)
    changes: list[str] = []
    items: list[Item] = []

    provision = driver.plan_provision(record.data if record else None, run.recreate)
    if provision.actions and run.dry_run:
        plan = list(provision.actions)
        if driver.configures:
            plan.append(f"configure it with {PLAYBOOK} once it answers over SSH")
        return TargetResult(TARGET, Status.PLANNED, plan)
    if provision.actions:
        with run.progress(f"provisioning {driver.describe()}", None):
            changes += driver.provision(provision, run.progress)
    if run.recreate and not run.dry_run and isinstance(driver, SSHUndercloud):
        # An undercloud rebuilt on purpose (any driver) is trusted again on its next first contact.
        if forgotten := driver.forget_host_key():
            changes.append(f"--recreate: forgot the undercloud's recorded SSH host key ({forgotten})")
    if not driver.configures:
        fp = fingerprint({"driver": driver.name, "registry": driver.registry_address})
        if record is not None and record.fingerprint == fp and not run.force:
            return TargetResult(TARGET, Status.UP_TO_DATE, ["up to date"])
        if run.dry_run:
            return TargetResult(TARGET, Status.PLANNED, [f"record {driver.describe()} (nothing to configure)"])
        run.state.save(TARGET, fp, data={"driver": driver.name, "registry": driver.registry_address})
        return TargetResult(TARGET, Status.CHANGED, [f"{driver.describe()}: nothing to create or configure"])

    extra_vars = configure_vars(run, driver)
    fp = fingerprint({
        "driver": driver.name,
        "ssh": str(driver.ssh()),
        "domain": provision.fingerprint,
        "vars": extra_vars,
        "playbook": _playbook_digest(),
    })
    if not provision.actions and not changes and record is not None and record.fingerprint == fp and not run.force:
        # A re-run of an unchanged undercloud touches it with one SSH check (is TripleO installed);
        # anything short of "yes" (or a host key forgotten by --recreate) takes the whole path below.
        with contextlib.suppress(UndercloudError):
            if driver.installed():
                return TargetResult(TARGET, Status.UP_TO_DATE, ["up to date"])
    with run.progress(f"waiting for SSH on {driver.describe()}", None):
        driver.wait(on_wait=lambda why, elapsed: LOG.info("waiting for SSH (%.0f s): %s", elapsed, why))
    lacks = driver.check()
    if lacks:
        raise UndercloudError(
            f"{driver.describe()} lacks what TripleO needs:\n  " + "\n  ".join(f"{l.what}: {l.hint}" for l in lacks),
            "fix the undercloud (or pick another undercloud.driver) and re-run",
        )
    installed = driver.installed()
    data = {"driver": driver.name, "ssh": str(driver.ssh()), "registry": driver.registry_address,
            "installed": True, **provision.data}
    # A fresh volume is a fresh undercloud, whatever it reports.
    rebuilt = "volume" in provision.steps
    if record is not None and record.fingerprint == fp and installed and not run.force and not rebuilt:
        if changes:  # e.g. a stopped VM started again
            run.state.save(TARGET, fp, data=data)
            return TargetResult(TARGET, Status.CHANGED, changes, items)
        return TargetResult(TARGET, Status.UP_TO_DATE, ["up to date"])
    if rebuilt:
        reason = "its volume was prepared just now"
    elif not installed:
        reason = "the undercloud does not report TripleO installed (no ~/stackrc)"
    elif record is None or record.fingerprint != fp:
        reason = "first run" if record is None else "its inputs changed"
    else:
        reason = "forced"
    if run.dry_run:
        return TargetResult(TARGET, Status.PLANNED, [f"run {PLAYBOOK} on {driver.describe()} ({reason})"])

    out_dir = run.options.work_dir / UNDERCLOUD_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / CONFIGURE_LOG
    with run.progress(f"configuring {driver.describe()} ({PLAYBOOK})", None):
        driver.run_playbook(PLAYBOOK, extra_vars, log_path, timeout=run.options.undercloud.playbook_timeout)
    if not driver.installed():
        raise UndercloudError(f"{PLAYBOOK} succeeded but {driver.describe()} does not report TripleO installed "
                              "(no ~/stackrc)", f"read {out_dir / INSTALL_LOG}")
    changes.append(f"configured {driver.describe()} with {PLAYBOOK} ({reason})")
    items.append(Item(PLAYBOOK, "ran", reason))
    install_log = Path(extra_vars["install_log_dest"])
    if install_log.is_file():
        items.append(Item(INSTALL_LOG, "fetched", str(install_log)))
    run.state.save(TARGET, fp, data=data)
    return TargetResult(TARGET, Status.CHANGED, changes, items)
