"""Images chosen by the deployment's services (the bundled scenarios), their parameter names
checked against TripleO's own data, and the hand-written project table against it."""

from __future__ import annotations

import logging

import pytest
import yaml

from apex_tools.catalog.images import in_range, load_catalog, project_table, release_images
from apex_tools.catalog.tht import heat_templates
from apex_tools.core.config import settings_path
from apex_tools.core.errors import SettingsError
from apex_tools.core.settings import OS_VERSIONS, DeploySettings, load_deploy_settings
from apex_tools.registry.deployment import Naming, deployment_images, parameter_file, parameter_refs

ODL_IMAGES = {"opendaylight", "neutron-server-opendaylight"}


def scenario(name: str, os_version: str) -> DeploySettings:
    """A bundled scenario file with its os_version replaced."""
    ds = load_deploy_settings(settings_path(name, "deploy"))
    return ds.model_copy(update={"deploy_options": ds.deploy_options.model_copy(update={"os_version": os_version})})


def naming(os_version: str) -> Naming:
    return Naming("docker.io", f"tripleo{os_version}", "centos-binary-", "current-tripleo", "192.0.2.1:8787")


def written_parameters(ds: DeploySettings) -> dict[str, str]:
    images = deployment_images(load_catalog(ds.os_version), ds, naming(ds.os_version))
    text = parameter_file(parameter_refs(images, ()), "192.0.2.1:8787")
    return yaml.safe_load(text)["parameter_defaults"]


def template_parameters(os_version: str) -> set[str]:
    data = release_images(os_version)
    return {p for table in ("images", "ceph_images") for entry in data[table].values() for p in entry.parameters}


@pytest.mark.parametrize("os_version", ["queens", "stein", "train"])
def test_ha_parameters_are_tripleos_and_include_clustercheck(os_version):
    params = set(written_parameters(scenario("os-nosdn-nofeature-ha", os_version))) - {"DockerInsecureRegistryAddress"}
    prefix = "Docker" if os_version in ("queens", "stein") else "Container"
    assert {f"{prefix}ClustercheckImage", f"{prefix}MysqlImage", f"{prefix}HAProxyImage"} <= params
    assert params <= template_parameters(os_version), params - template_parameters(os_version)
    heat = heat_templates(os_version)
    assert [p for p in params if not heat.has_parameter(p)] == []
    # The names the hand-written catalog got wrong are not written.
    assert not {f"{prefix}NeutronMetadataAgentImage", f"{prefix}MysqlClientImage", f"{prefix}NovajoinImage",
                "ContainerPlacementApiImage"} & params


@pytest.mark.parametrize("os_version", ["queens", "rocky", "stein"])
def test_opendaylight_images_only_for_the_odl_scenario(os_version):
    odl = {i.name for i in load_catalog(os_version).deployment_images(scenario("os-odl-nofeature-noha", os_version))}
    nosdn = {i.name for i in load_catalog(os_version).deployment_images(scenario("os-nosdn-nofeature-noha", os_version))}
    assert ODL_IMAGES <= odl
    assert "neutron-openvswitch-agent" not in odl and "neutron-server" not in odl
    assert not ODL_IMAGES & nosdn
    assert {"neutron-server", "neutron-openvswitch-agent"} <= nosdn


@pytest.mark.parametrize("os_version", OS_VERSIONS)
@pytest.mark.parametrize("name", ["os-nosdn-nofeature-noha", "os-nosdn-nofeature-ha", "os-odl-nofeature-noha"])
def test_every_chosen_image_has_an_enabled_service(name, os_version):
    cat = load_catalog(os_version)
    ds = scenario(name, os_version)
    if ds.deploy_options.sdn_controller and not any(
            e.endswith("neutron-opendaylight.yaml") for e in cat.heat.scenario_environments):
        with pytest.raises(SettingsError, match="neutron-opendaylight"):  # refused, not half-deployed
            cat.deployment_images(ds)
        return
    enabled = cat.enabled_services(ds)
    images = cat.deployment_images(ds)
    assert images
    for image in images:
        assert image.services and set(image.services) <= set(enabled), image.name
        assert image.parameters, image.name
    ceph = cat.ceph_image(ds)
    if ceph is not None:
        assert set(ceph.services) <= set(enabled)
    # Services the environment files switch off select nothing.
    assert "OpenDaylightApi" in enabled if ds.deploy_options.sdn_controller else "OpenDaylightApi" not in enabled


def test_ha_switches_services_on_and_off():
    cat = load_catalog("queens")
    noha, ha = scenario("os-nosdn-nofeature-noha", "queens"), scenario("os-nosdn-nofeature-ha", "queens")
    assert "Clustercheck" not in cat.enabled_services(noha) and "Clustercheck" in cat.enabled_services(ha)
    assert "Keepalived" in cat.enabled_services(noha) and "Keepalived" not in cat.enabled_services(ha)
    assert "environments/docker-ha.yaml" in cat.environments(ha)
    assert "keepalived" in {i.name for i in cat.deployment_images(noha)}
    assert "keepalived" not in {i.name for i in cat.deployment_images(ha)}


def test_the_plan_says_why_each_image_is_there(caplog):
    ds = scenario("os-nosdn-nofeature-noha", "train")
    with caplog.at_level(logging.DEBUG, logger="apex_tools.catalog.images"):
        images = load_catalog("train").deployment_images(ds)
    text = caplog.text
    assert f"train: {len(images)} images for" in text
    assert "image nova-api: services NovaApi (role Controller" in text


def test_project_table_names_only_images_tripleo_has():
    table = project_table()
    missing = [f"{name} ({version})" for name, entry in table.images.items() for version in OS_VERSIONS
               if in_range(version, entry.since, entry.until) and name not in release_images(version)["images"]]
    assert missing == []
    never = [name for name in table.images if not any(name in release_images(v)["images"] for v in OS_VERSIONS)]
    assert never == []
    assert "novajoin" not in {p for n, e in table.images.items() if n.startswith("nova-") for p in e.projects}
