"""The catalog: exact project lookups, images chosen by services, TripleO's names per release."""

from __future__ import annotations

import pytest

from apex_tools.catalog.images import load_catalog
from apex_tools.catalog.tripleo import SCENARIO_ENVIRONMENTS
from apex_tools.core.errors import SettingsError
from apex_tools.core.settings import OS_VERSIONS, DeploySettings

from conftest import check_golden

def settings(**options: object) -> DeploySettings:
    return DeploySettings.model_validate({"global_params": {"ha_enabled": False}, "deploy_options": options})


def test_nova_images_match_golden_for_every_version():
    lines = []
    for version in OS_VERSIONS:
        cat = load_catalog(version)
        for name in cat.images_for_project("openstack/nova"):
            img = cat.image(name)
            ref = img.ref("docker.io", f"tripleo{version}", "centos-binary-", "current-tripleo")
            lines.append(f"{version} {ref} {' '.join(img.parameters)}")
    check_golden("catalog-nova.txt", "\n".join(lines) + "\n")


@pytest.mark.parametrize(
    "project, expected",
    [
        ("openstack/nova", {"nova-api", "nova-compute", "nova-conductor", "nova-libvirt", "nova-novncproxy", "nova-scheduler"}),
        ("openstack/novajoin", {"novajoin-notifier", "novajoin-server"}),
        ("neutron", {"neutron-dhcp-agent", "neutron-l3-agent", "neutron-metadata-agent", "neutron-openvswitch-agent",
                     "neutron-server", "neutron-metadata-agent-ovn"}),
        ("openstack/puppet-tripleo", set()),
    ],
    ids=["nova-not-novajoin", "novajoin", "neutron-incl-sdn-variants", "puppet-has-no-image"],
)
def test_images_for_project_is_exact(project, expected):
    assert set(load_catalog("wallaby").images_for_project(project)) == expected


def test_versions_differ_where_tripleo_changed():
    queens, stein, train = load_catalog("queens"), load_catalog("stein"), load_catalog("train")
    assert "nova-placement-api" in queens.images and "placement-api" not in queens.images
    assert "placement-api" in train.images and "nova-placement-api" not in train.images
    assert queens.image("nova-api").parameters[0] == "DockerNovaApiImage"
    # TripleO renamed Docker…Image to Container…Image in train (tripleo-common 11), not stein.
    assert stein.image("nova-api").parameters[0] == "DockerNovaApiImage"
    assert train.image("nova-api").parameters[0] == "ContainerNovaApiImage"
    assert set(train.image("placement-api").parameters) == {"ContainerPlacementImage", "ContainerPlacementConfigImage"}
    assert "DockerNeutronMetadataImage" in queens.image("neutron-metadata-agent").parameters
    assert "DockerClustercheckImage" in queens.image("mariadb").parameters
    # tripleo-common names it, queens' THT does not declare it: Heat would ignore it, so it is dropped.
    assert "DockerMysqlClientConfigImage" not in queens.image("mariadb").parameters
    assert "ContainerMysqlClientConfigImage" not in train.image("mariadb").parameters
    assert "ContainerNovajoinServerImage" in train.image("novajoin-server").parameters


@pytest.mark.parametrize(
    "version, sdn, present, absent",
    [
        ("queens", False, {"neutron-server", "neutron-openvswitch-agent"}, {"opendaylight", "novajoin-server", "ovn-northd"}),
        ("stein", "opendaylight", {"opendaylight", "neutron-server-opendaylight"},
         {"neutron-server", "neutron-openvswitch-agent", "ovn-northd"}),
        ("train", "ovn", {"ovn-northd", "neutron-server-ovn", "ovn-controller"}, {"neutron-server", "neutron-dhcp-agent", "opendaylight"}),
    ],
    ids=["no-sdn", "opendaylight", "ovn"],
)
def test_deployment_images_follow_the_sdn_controller(version, sdn, present, absent):
    names = {i.name for i in load_catalog(version).deployment_images(settings(os_version=version, sdn_controller=sdn))}
    assert present <= names
    assert not (absent & names)


def test_opendaylight_is_refused_where_tht_has_no_environment_for_it():
    with pytest.raises(SettingsError, match="train's tripleo-heat-templates .* have none of .*neutron-opendaylight"):
        load_catalog("train").deployment_images(settings(os_version="train", sdn_controller="opendaylight"))


def test_no_two_deployed_images_fill_the_same_parameter():
    for version in OS_VERSIONS:
        for sdn in (False, "opendaylight", "ovn"):
            cat = load_catalog(version)
            ds = settings(os_version=version, sdn_controller=sdn)
            if sdn and not any(e in cat.heat.scenario_environments for e in SCENARIO_ENVIRONMENTS[sdn]):
                continue
            params = [p for i in cat.deployment_images(ds) for p in i.parameters]
            assert len(params) == len(set(params)), (version, sdn)


def test_ceph_image_only_with_ceph_from_the_release_defaults():
    cat = load_catalog("rocky")
    assert str(cat.ceph_image(settings(ceph=True, os_version="rocky")).ref("127.0.0.1:5000")) == (
        "127.0.0.1:5000/ceph/daemon:" + cat.ceph_defaults["tag"])
    assert cat.ceph_defaults["namespace"] == "docker.io/ceph"
    assert cat.ceph_image(settings(ceph=False, os_version="rocky")) is None
    assert cat.ceph.parameters == ("DockerCephDaemonImage",)
    assert load_catalog("train").ceph.registry == "quay.ceph.io"


def test_unknown_image_and_version_are_named():
    with pytest.raises(SettingsError, match="'nova-foo' is not in the catalog"):
        load_catalog("master").image("nova-foo")
    with pytest.raises(SettingsError, match="'zed' is unknown"):
        load_catalog("zed")
