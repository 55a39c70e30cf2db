"""The service → image catalog: exact project lookups, deployment image sets, TripleO names."""

from __future__ import annotations

import pytest

from apex_tools.catalog.images import load_catalog
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
                     "neutron-server", "neutron-server-opendaylight", "neutron-metadata-agent-ovn", "neutron-server-ovn"}),
        ("openstack/puppet-tripleo", set()),
    ],
    ids=["nova-not-novajoin", "novajoin", "neutron-incl-sdn-variants", "puppet-has-no-image"],
)
def test_images_for_project_is_exact(project, expected):
    assert set(load_catalog("master").images_for_project(project)) == expected


def test_versions_differ_where_tripleo_changed():
    queens, master = load_catalog("queens"), load_catalog("master")
    assert "nova-placement-api" in queens.images and "placement-api" not in queens.images
    assert "placement-api" in master.images and "nova-placement-api" not in master.images
    assert queens.image("nova-api").parameters[0] == "DockerNovaApiImage"
    assert master.image("nova-api").parameters[0] == "ContainerNovaApiImage"


@pytest.mark.parametrize(
    "sdn, present, absent",
    [
        (False, {"neutron-server", "neutron-openvswitch-agent"}, {"opendaylight", "novajoin-server", "ovn-northd"}),
        ("opendaylight", {"opendaylight", "neutron-server-opendaylight", "neutron-dhcp-agent"},
         {"neutron-server", "neutron-openvswitch-agent", "ovn-northd"}),
        ("ovn", {"ovn-northd", "neutron-server-ovn"}, {"neutron-server", "neutron-dhcp-agent", "opendaylight"}),
    ],
    ids=["no-sdn", "opendaylight", "ovn"],
)
def test_deployment_images_follow_the_sdn_controller(sdn, present, absent):
    names = {i.name for i in load_catalog("master").deployment_images(settings(sdn_controller=sdn))}
    assert present <= names
    assert not (absent & names)


def test_no_two_deployed_images_fill_the_same_parameter():
    for version in OS_VERSIONS:
        for sdn in (False, "opendaylight", "ovn"):
            params = [p for i in load_catalog(version).deployment_images(settings(sdn_controller=sdn)) for p in i.parameters]
            assert len(params) == len(set(params)), (version, sdn)


def test_ceph_image_only_with_ceph():
    cat = load_catalog("rocky")
    assert str(cat.ceph_image(settings(ceph=True)).ref("127.0.0.1:5000")) == (
        "127.0.0.1:5000/ceph/daemon:v3.1.0-stable-3.1-luminous-centos-7-x86_64")
    assert cat.ceph_image(settings(ceph=False)) is None
    assert cat.ceph.parameters == ("DockerCephDaemonImage",)


def test_unknown_image_and_version_are_named():
    with pytest.raises(SettingsError, match="'nova-foo' is not in the catalog"):
        load_catalog("master").image("nova-foo")
    with pytest.raises(SettingsError, match="'zed' is unknown"):
        load_catalog("zed")
