"""The ``openstack overcloud deploy`` command, in Apex's order (``create_deploy_cmd``).

Environment files: the network environment, THT's ``docker.yaml`` where the release has it,
``docker-ha.yaml`` with HA, the upstream environment, ``docker-images.yaml``, the scenario's SDN
and feature files, the Ceph files, the virtual or baremetal environment. Then ``--ntp-server``,
the scale and flavors (flags where the release takes them), ``--networks-file`` and
``--libvirt-type``. Local files are named relative to the stack user's home, where the deploy
playbook puts them and runs the command.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from apex_tools.catalog.tht import HeatTemplates, scenario_environments
from apex_tools.catalog.tripleo import SCENARIO_ENVIRONMENTS
from apex_tools.core.errors import SettingsError
from apex_tools.core.settings import DeploySettings, NetworkSettings
from apex_tools.core.workdir import NETWORK_DATA, NETWORK_ENV, PARAMETER_FILE, STORAGE_ENV, UPSTREAM_ENV
from apex_tools.overcloud.environments import SCALE_FLAG_RELEASES, node_environment_name
from apex_tools.overcloud.inventory import Scale

THT_ROOT = "/usr/share/openstack-tripleo-heat-templates"
DOCKER_ENV = "environments/docker.yaml"
DOCKER_HA_ENV = "environments/docker-ha.yaml"
# Where a release keeps the containerized services' environments (Queens: services-docker).
SERVICE_DIRS = {"queens": "environments/services-docker"}
DEFAULT_SERVICE_DIR = "environments/services"
# Feature switches whose service environment Apex added (OTHER_FILE_MAP, containers).
FEATURE_FILES = ("tacker", "congress", "barometer", "rt_kvm")


@dataclass(frozen=True)
class DeployPlan:
    """What the command is made of."""

    ds: DeploySettings
    ns: NetworkSettings
    scale: Scale
    tht: HeatTemplates
    virtual: bool
    libvirt_type: str
    timeout: int
    ceph: bool

    @property
    def os_version(self) -> str:
        return self.ds.os_version


def _unsupported(ds: DeploySettings) -> list[str]:
    opts = ds.deploy_options
    found = []
    if not opts.containers:
        found.append("deploy_options.containers: false (apex-tools deploys containerized overclouds)")
    if opts.vim != "openstack":
        found.append(f"deploy_options.vim: {opts.vim!r}")
    if opts.dataplane == "fdio" or opts.vpp:
        found.append("deploy_options.dataplane: fdio / vpp")
    if opts.sriov:
        found.append(f"deploy_options.sriov: {opts.sriov!r}")
    return found


def _service_env(tht: HeatTemplates, os_version: str, name: str) -> str:
    """``<services dir>/<name>``: the directory the release has it in, else the release's usual one."""
    for folder in (SERVICE_DIRS.get(os_version, DEFAULT_SERVICE_DIR), DEFAULT_SERVICE_DIR, *SERVICE_DIRS.values()):
        if tht.has_environment(f"{folder}/{name}"):
            return f"{folder}/{name}"
    return f"{SERVICE_DIRS.get(os_version, DEFAULT_SERVICE_DIR)}/{name}"


def feature_environments(ds: DeploySettings, tht: HeatTemplates) -> list[str]:
    """THT environment files of the scenario's SDN features and optional services (relative paths)."""
    opts = ds.deploy_options
    names: list[str] = []
    if opts.sdn_controller == "opendaylight":
        if opts.dataplane == "ovs_dpdk":
            names.append("neutron-opendaylight-dpdk.yaml")
        if opts.sfc:
            names.append("neutron-sfc-opendaylight.yaml")
        if opts.vpn:
            names.append("neutron-bgpvpn-opendaylight.yaml")
    names += [f"{key}.yaml" for key in FEATURE_FILES if getattr(opts, key)]
    return [_service_env(tht, ds.os_version, name) for name in names]


def tht_environments(plan: DeployPlan) -> list[str]:
    """Every THT environment the command names, relative to the THT root (the pre-flight checks them)."""
    return [p.removeprefix(THT_ROOT + "/") for p in environment_files(plan) if p.startswith(THT_ROOT + "/")]


def environment_files(plan: DeployPlan) -> list[str]:
    """The ``-e`` files in Apex's order: THT ones as absolute paths, ours relative to the stack home."""
    problems = _unsupported(plan.ds)
    if problems:
        raise SettingsError(f"not supported by deploy: {'; '.join(problems)}", "change the deploy settings")

    def tht(path: str) -> str:
        return f"{THT_ROOT}/{path}"

    # The scenario's own THT files come from the same choice the image catalog made.
    chosen = scenario_environments(plan.ds, plan.tht)
    containers = [p for p in chosen if p in (DOCKER_ENV, DOCKER_HA_ENV)]
    ceph = [p for p in chosen if p in SCENARIO_ENVIRONMENTS["ceph"]]
    sdn = [p for p in chosen if p not in containers and p not in ceph]
    files = [NETWORK_ENV, *map(tht, containers), UPSTREAM_ENV, PARAMETER_FILE]
    files += [tht(p) for p in sdn + feature_environments(plan.ds, plan.tht)]
    if plan.ceph:
        files += [*map(tht, ceph), STORAGE_ENV]
    files.append(node_environment_name(plan.virtual))
    return files


def local_files(plan: DeployPlan) -> list[str]:
    """Our own files the command names (to copy to the stack home), in command order."""
    return [f for f in environment_files(plan) if not f.startswith("/")] + [NETWORK_DATA]


def command_args(plan: DeployPlan) -> list[str]:
    """The command as an argument list."""
    args = ["openstack", "overcloud", "deploy", "--templates", "--timeout", str(plan.timeout)]
    for path in environment_files(plan):
        args += ["-e", path]
    args += ["--ntp-server", plan.ns.ntp[0]]
    if plan.os_version in SCALE_FLAG_RELEASES:
        args += ["--control-scale", str(plan.scale.control), "--compute-scale", str(plan.scale.compute),
                 "--control-flavor", "control", "--compute-flavor", "compute"]
    # Every supported release (Pike and later) takes a networks file.
    args += ["--networks-file", NETWORK_DATA]
    args += ["--libvirt-type", plan.libvirt_type]
    return args


def deploy_command(plan: DeployPlan) -> str:
    """``deploy_command``'s text: one shell line, quoted, newline-terminated (same inputs, same bytes)."""
    return " ".join(shlex.quote(a) for a in command_args(plan)) + "\n"


def libvirt_type(setting: str, virtual: bool, dev_kvm: Path = Path("/dev/kvm"),
                 sys_module: Path = Path("/sys/module")) -> str:
    """``kvm`` or ``qemu``: the setting when given; kvm for baremetal; for VMs kvm only when this
    host's /dev/kvm opens and its KVM module allows nested guests."""
    if setting:
        return setting
    if not virtual:
        return "kvm"
    try:
        fd = os.open(dev_kvm, os.O_RDWR)
    except OSError:
        return "qemu"
    os.close(fd)
    for module in ("kvm_intel", "kvm_amd"):
        try:
            nested = (sys_module / module / "parameters" / "nested").read_text().strip()
        except OSError:
            continue
        return "kvm" if nested in ("Y", "y", "1") else "qemu"
    return "qemu"
