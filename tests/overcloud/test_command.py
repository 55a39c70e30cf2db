"""The deploy command and the environment files of the bundled scenarios (golden files), and the
rules around them: Apex's order, docker.yaml only where the release has it, HA's three
controllers, kvm or qemu, the same bytes for the same inputs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from apex_tools.catalog.tht import HeatTemplates, heat_templates
from apex_tools.core.errors import SettingsError
from apex_tools.core.settings import load_deploy_settings, load_network_settings
from apex_tools.overcloud import environments
from apex_tools.overcloud.command import (
    THT_ROOT,
    DeployPlan,
    command_args,
    deploy_command,
    environment_files,
    libvirt_type,
    local_files,
)
from apex_tools.overcloud.inventory import load_inventory, scale_of

from conftest import REPO, check_golden

SCENARIOS = {
    "os-nosdn-nofeature-noha": "virtual",
    "os-nosdn-nofeature-ha": "virtual-ha",
    "os-odl-nofeature-noha": "virtual",
    "os-nosdn-queens_upstream-noha": "virtual",
}


def _plan(scenario: str, inventory: str | None = None, virtual: bool = True, tht: HeatTemplates | None = None,
          libvirt: str = "qemu") -> DeployPlan:
    ds = load_deploy_settings(REPO / "config" / "deploy" / f"{scenario}.yaml")
    ns = load_network_settings(REPO / "config" / "network" / "network_settings.yaml")
    inv = load_inventory(REPO / "config" / "inventory" / f"{inventory or SCENARIOS[scenario]}.yaml")
    tht = tht or heat_templates(ds.os_version)  # the bundled facts of the release
    return DeployPlan(ds, ns, scale_of(inv, ds.global_params.ha_enabled), tht, virtual, libvirt, 120,
                      ceph=ds.deploy_options.ceph)


def _files(plan: DeployPlan) -> str:
    """Every file deploy writes for ``plan`` except instackenv.json, as one text (the golden form)."""
    ns = plan.ns
    files = {
        "deploy_command": deploy_command(plan),
        "network-environment.yaml": environments.network_environment(ns, "network_settings.yaml"),
        "upstream-environment.yaml": environments.upstream_environment(plan.os_version),
        environments.node_environment_name(plan.virtual):
            environments.node_environment(plan.virtual, plan.os_version, plan.scale),
        "network_data.yaml": environments.network_data(),
    }
    return "".join(f"==> {name} <==\n{text}" for name, text in files.items())


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_golden_command_and_environment_files(scenario: str) -> None:
    check_golden(f"deploy-{scenario}.txt", _files(_plan(scenario)))


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_environment_file_is_yaml_and_every_local_one_is_written(scenario: str) -> None:
    plan = _plan(scenario)
    for name in ("network-environment.yaml", "upstream-environment.yaml", "virtual-environment.yaml"):
        text = _files(plan).split(f"==> {name} <==\n")[1].split("==> ")[0]
        assert isinstance(yaml.safe_load(text)["parameter_defaults"], dict)
    assert isinstance(yaml.safe_load(environments.network_data()), list)
    # Every -e that is not a THT path is one of ours or another target's output.
    ours = {"network-environment.yaml", "upstream-environment.yaml", "docker-images.yaml",
            "storage-environment.yaml", "virtual-environment.yaml"}
    assert {f for f in environment_files(plan) if not f.startswith("/")} <= ours
    assert "network_data.yaml" in local_files(plan)


def test_same_inputs_same_bytes() -> None:
    assert _files(_plan("os-odl-nofeature-noha")) == _files(_plan("os-odl-nofeature-noha"))


def test_apex_order_for_ha_odl_with_ceph() -> None:
    plan = _plan("os-odl-nofeature-noha", inventory="virtual-ha")
    ha = plan.ds.model_copy(update={"global_params": plan.ds.global_params.model_copy(update={"ha_enabled": True})})
    plan = DeployPlan(ha, plan.ns, scale_of(load_inventory(REPO / "config/inventory/virtual-ha.yaml"), True),
                      heat_templates("queens"), True, "kvm", 120, ceph=True)
    files = environment_files(plan)
    assert files == [
        "network-environment.yaml",
        f"{THT_ROOT}/environments/docker.yaml",
        f"{THT_ROOT}/environments/docker-ha.yaml",
        "upstream-environment.yaml",
        "docker-images.yaml",
        f"{THT_ROOT}/environments/services-docker/neutron-opendaylight.yaml",
        f"{THT_ROOT}/environments/ceph-ansible/ceph-ansible.yaml",
        "storage-environment.yaml",
        "virtual-environment.yaml",
    ]
    args = command_args(plan)
    assert args[:6] == ["openstack", "overcloud", "deploy", "--templates", "--timeout", "120"]
    # The scenario is stein: the counts go into the node environment, not the flags.
    assert args[args.index("--ntp-server"):] == [
        "--ntp-server", "pool.ntp.org", "--networks-file", "network_data.yaml", "--libvirt-type", "kvm"]


def test_docker_yaml_only_where_the_release_has_it() -> None:
    with_it = environment_files(_plan("os-nosdn-nofeature-noha", tht=heat_templates("queens")))
    without = environment_files(_plan("os-nosdn-nofeature-noha", tht=heat_templates("master")))
    assert f"{THT_ROOT}/environments/docker.yaml" in with_it
    assert f"{THT_ROOT}/environments/docker.yaml" not in without


def test_queens_takes_scale_and_flavor_flags_later_releases_parameters() -> None:
    queens = command_args(_plan("os-nosdn-queens_upstream-noha"))
    assert queens[queens.index("--control-scale"):queens.index("--networks-file")] == [
        "--control-scale", "1", "--compute-scale", "1", "--control-flavor", "control", "--compute-flavor", "compute"]
    master = _plan("os-nosdn-nofeature-ha")
    assert "--control-scale" not in command_args(master)
    params = yaml.safe_load(environments.node_environment(True, "master", master.scale))["parameter_defaults"]
    assert (params["ControllerCount"], params["ComputeCount"]) == (3, 2)


def test_baremetal_environment_instead_of_virtual() -> None:
    plan = _plan("os-nosdn-nofeature-noha", virtual=False, libvirt="kvm")
    files = environment_files(plan)
    assert files[-1] == "baremetal-environment.yaml" and "virtual-environment.yaml" not in files


def test_ha_needs_three_controllers() -> None:
    inv = load_inventory(REPO / "config" / "inventory" / "virtual.yaml")
    with pytest.raises(SettingsError) as err:
        scale_of(inv, ha=True)
    assert "HA needs 3 nodes with profile:control, the inventory has 1" in err.value.message
    assert str(inv.path) in err.value.message and "virtual-ha" in err.value.hint


def test_isolated_networks_are_refused_loudly() -> None:
    ns = load_network_settings(REPO / "config" / "network" / "network_settings.yaml")
    with_tenant = ns.model_copy(update={"networks": ns.networks.model_copy(
        update={"tenant": {"enabled": True, "cidr": "11.0.0.0/24"}})})
    with pytest.raises(SettingsError, match="networks tenant: isolated overcloud networks are not supported"):
        environments.network_environment(with_tenant, "net.yaml")
    disabled = ns.model_copy(update={"networks": ns.networks.model_copy(update={"tenant": {"enabled": False}})})
    assert "ControlPlaneSubnetCidr" in environments.network_environment(disabled, "net.yaml")


def test_libvirt_type(tmp_path: Path) -> None:
    kvm = tmp_path / "kvm"
    kvm.write_text("")  # opens read-write like a usable /dev/kvm
    sys_module = tmp_path / "module"
    (sys_module / "kvm_intel" / "parameters").mkdir(parents=True)
    nested = sys_module / "kvm_intel" / "parameters" / "nested"
    assert libvirt_type("qemu", virtual=False) == "qemu"  # the setting wins
    assert libvirt_type("", virtual=False) == "kvm"  # real hardware
    assert libvirt_type("", True, tmp_path / "no-kvm", sys_module) == "qemu"
    nested.write_text("Y\n")
    assert libvirt_type("", True, kvm, sys_module) == "kvm"
    nested.write_text("N\n")
    assert libvirt_type("", True, kvm, sys_module) == "qemu"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        assert libvirt_type("", virtual=True) == "qemu"  # this machine: nested KVM does not work
