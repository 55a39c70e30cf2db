"""The pre-flight against a real registry: a missing image, a missing blob, a wrong parameter
name, an unreadable or broken environment file, a THT environment the release lacks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import requests
import yaml

from apex_tools.catalog.tht import HeatTemplates
from apex_tools.core.config import Layer, resolve
from apex_tools.core.reference import ImageRef
from apex_tools.overcloud import preflight
from apex_tools.overcloud.inventory import Scale, load_inventory
from apex_tools.registry.client import RegistryClient
from apex_tools.undercloud.local import LocalUndercloud
from apex_tools.undercloud.ssh import CommandResult

from conftest import REPO
from registry_support import layer_blob, push_image

THT = HeatTemplates("master", frozenset({"ContainerNovaApiImage", "ContainerKeystoneImage"}),
                    frozenset({"environments/docker-ha.yaml"}))


@pytest.fixture
def pushed(registry):
    client = RegistryClient(registry.address, tls="http")
    for name in ("nova-api", "keystone"):
        push_image(client, f"tripleomaster/centos-binary-{name}", "current-tripleo", [layer_blob(name, 200)])
    return registry, client


def _client_for(client: RegistryClient):
    return lambda ref: (client, client.host)


def test_a_missing_image_is_named_with_the_registry_as_the_undercloud_reaches_it(pushed) -> None:
    registry, client = pushed
    refs = [ImageRef.parse(f"{registry.address}/tripleomaster/centos-binary-{n}:current-tripleo")
            for n in ("nova-api", "keystone", "heat-engine")]
    problems = preflight.check_images(refs, _client_for(client))
    assert [str(p) for p in problems] == [
        f"[images] {registry.address}/tripleomaster/centos-binary-heat-engine:current-tripleo: no such manifest in "
        f"the registry (as the undercloud reaches it: {registry.address}) — re-run push-registry with --force"]
    with pytest.raises(preflight.PreflightError) as err:
        preflight.raise_problems(problems)
    assert err.value.message.startswith("pre-flight: 1 problem (images); the deploy was not started:")


def test_a_manifest_whose_blob_is_gone_is_not_pullable(pushed) -> None:
    registry, client = pushed
    repo = "tripleomaster/centos-binary-keystone"
    manifest = client.get_manifest(repo, "current-tripleo")
    layer = manifest.blobs()[1]["digest"]
    assert requests.delete(f"{registry.url}/v2/{repo}/blobs/{layer}", timeout=10).status_code == 202
    problems = preflight.check_images([ImageRef.parse(f"{registry.address}/{repo}:current-tripleo")],
                                      _client_for(client))
    assert [p.message for p in problems] == [
        f"{registry.address}/{repo}:current-tripleo: blob {layer} is missing from {registry.address}"]


def test_a_silent_registry_is_a_problem_not_a_crash(tmp_path) -> None:
    client = RegistryClient("127.0.0.1:9", tls="http")  # discard port: nothing listens
    refs = [ImageRef.parse(f"127.0.0.1:9/tripleomaster/centos-binary-{n}:x") for n in ("cron", "redis")]
    problems = preflight.check_images(refs, _client_for(client))
    assert [p.message for p in problems] == [
        "registry 127.0.0.1:9 does not answer at /v2/ (as the undercloud reaches it)"]


def test_a_wrong_parameter_name_is_caught(tmp_path) -> None:
    images = tmp_path / "docker-images.yaml"
    images.write_text(yaml.safe_dump({"parameter_defaults": {
        "ContainerNovaApiImage": "r:8787/tripleomaster/centos-binary-nova-api:apex",
        "ContainerNeutronMetadataAgentImage": "r:8787/tripleomaster/centos-binary-neutron-metadata-agent:x",
        "DockerInsecureRegistryAddress": ["r:8787"],
    }}))
    params = preflight.image_parameters(images)
    assert sorted(params) == ["ContainerNeutronMetadataAgentImage", "ContainerNovaApiImage"]
    problems = preflight.check_parameters(params, THT, "docker-images.yaml")
    assert [str(p) for p in problems] == [
        "[parameters] docker-images.yaml: ContainerNeutronMetadataAgentImage: tripleo-heat-templates master has no "
        "such parameter (Heat would ignore it and deploy the default upstream image) — fix the parameter's name in "
        "the catalog (build/) and re-run push-registry"]


def test_unreadable_and_broken_environment_files_and_a_missing_tht_environment(tmp_path) -> None:
    good = tmp_path / "network-environment.yaml"
    good.write_text("parameter_defaults: {NtpServer: [pool.ntp.org]}\n")
    unreadable = tmp_path / "upstream-environment.yaml"
    unreadable.mkdir()  # root reads any file: a folder in its place is what cannot be read
    broken = tmp_path / "virtual-environment.yaml"
    broken.write_text("parameter_defaults:\n  NovaWorkers: [1\n")
    files = {p.name: p for p in (good, unreadable, broken)}
    problems = preflight.check_environment_files(
        files, ["environments/docker-ha.yaml", "environments/services/neutron-opendaylight.yaml"], THT)
    shown = [str(p) for p in problems]
    assert shown[0] == (f"[environment files] {unreadable}: cannot read: Is a directory — make "
                        "upstream-environment.yaml readable (or re-run the target that writes it)")
    # The parser's own words differ between libyaml and the pure-Python loader; the place does not.
    assert re.fullmatch(re.escape(f"[environment files] {broken}: line 3, column 1: not valid YAML: ")
                        + r".*expected ',' or '\]'.*"
                        + re.escape(" — fix virtual-environment.yaml or re-run the target that writes it"), shown[1])
    assert shown[2:] == [
        "[environment files] tripleo-heat-templates master has no environments/services/neutron-opendaylight.yaml"
        " — change the deploy settings' features, or use a release that has it",
    ]


def test_scale_and_the_undercloud(tmp_path) -> None:
    inv = load_inventory(REPO / "config" / "inventory" / "virtual.yaml")
    assert preflight.check_scale(inv, Scale(1, 1)) == []
    [problem] = preflight.check_scale(inv, Scale(1, 2))
    assert problem.message == f"{inv.path}: 2 compute nodes wanted, 1 with profile:compute"
    options = resolve([Layer("test", {"work_dir": str(tmp_path), "undercloud": {"driver": "local"}})]).options
    problems, probe = preflight.check_undercloud(LocalUndercloud(options, "127.0.0.1:8787"), str(tmp_path))
    assert problems == [] and probe.answers and probe.templates
    problems, probe = preflight.check_undercloud(LocalUndercloud(options, "127.0.0.1:8787"), str(tmp_path / "none"))
    assert problems == [] and probe.answers and not probe.templates


def test_an_undercloud_whose_shell_fails_does_not_answer_and_says_why(tmp_path) -> None:
    """The probe's one round trip is all deploy asks: a login shell that cannot run it is named."""
    options = resolve([Layer("test", {"work_dir": str(tmp_path), "undercloud": {"driver": "local"}})]).options

    class Refusing(LocalUndercloud):
        def run(self, command: str, timeout: float = 120.0) -> CommandResult:
            return CommandResult(command, 255, "", "ssh: connect to host 192.0.2.1 port 22: Connection refused\n")

    [problem], probe = preflight.check_undercloud(Refusing(options, "127.0.0.1:8787"), str(tmp_path))
    assert not probe.answers and not probe.tripleo and not probe.templates
    assert problem.message.endswith("does not answer: ssh: connect to host 192.0.2.1 port 22: Connection refused")


def _plan(scenario: str, os_version: str | None = None):
    from apex_tools.catalog.tht import heat_templates
    from apex_tools.core.settings import load_deploy_settings, load_network_settings
    from apex_tools.overcloud.command import DeployPlan
    from apex_tools.overcloud.inventory import scale_of

    ds = load_deploy_settings(REPO / "config" / "deploy" / f"{scenario}.yaml")
    if os_version:
        ds = ds.model_copy(update={"deploy_options": ds.deploy_options.model_copy(update={"os_version": os_version})})
    inventory = load_inventory(REPO / "config" / "inventory" / "virtual-ha.yaml")
    return DeployPlan(ds, load_network_settings(REPO / "config" / "network" / "network_settings.yaml"),
                      scale_of(inventory, ds.global_params.ha_enabled), heat_templates(ds.os_version), True, "qemu",
                      120, ceph=ds.deploy_options.ceph)


def test_the_odl_stein_scenario_is_refused_naming_file_entry_and_missing_template() -> None:
    from apex_tools.overcloud.command import tht_environments

    plan = _plan("os-odl-nofeature-noha")
    problems = [str(p) for p in preflight.check_environment_files({}, tht_environments(plan), plan.tht)]
    assert problems == [
        "[environment files] environments/services/neutron-opendaylight.yaml: resource_registry "
        "OS::TripleO::Services::OpenDaylightOvs maps ../../puppet/services/opendaylight-ovs.yaml, which "
        "tripleo-heat-templates stein (tripleo-heat-templates 10.6.2) does not ship: the stock release cannot deploy "
        "this scenario — pick another scenario or os_version, or patch the templates (image_patches)",
        "[environment files] environments/services/neutron-opendaylight.yaml enables "
        "OS::TripleO::Services::OpenDaylightApi, which stein's python-tripleoclient deprecates: the deploy would stop "
        "at its confirmation prompt (\"Action not confirmed\") without a terminal — pick another scenario or os_version",
    ]


@pytest.mark.parametrize("scenario, os_version", [
    ("os-nosdn-nofeature-noha", "stein"), ("os-nosdn-nofeature-noha", "train"), ("os-nosdn-nofeature-noha", None),
    ("os-nosdn-nofeature-ha", "train"), ("os-nosdn-nofeature-ha", None), ("os-nosdn-queens_upstream-noha", None),
], ids=lambda v: str(v))
def test_every_registry_entry_of_the_other_scenarios_resolves(scenario: str, os_version: str | None) -> None:
    from apex_tools.overcloud.command import tht_environments

    plan = _plan(scenario, os_version)
    assert tht_environments(plan)
    assert preflight.check_environment_files({}, tht_environments(plan), plan.tht) == []
