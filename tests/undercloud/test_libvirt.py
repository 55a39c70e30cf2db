"""The libvirt driver: XML validated by virt-xml-validate, the lifecycle on libvirt's
``test:///default`` driver (SSH then answered by a loopback sshd), the image prepared by a real
libguestfs launch and read back with guestfish."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from apex_tools.core.config import Layer, resolve
from apex_tools.core.errors import UndercloudError
from apex_tools.core.settings import NetworkSettings
from apex_tools.undercloud.drivers import driver_for
from apex_tools.undercloud.image import prepare_image
from apex_tools.undercloud.libvirt_vm import render_domain, render_network, stable_mac
from conftest import need
from ssh_support import keygen, sshd  # noqa: F401 (fixture)

libvirt = pytest.importorskip("libvirt")


def _validate(xml: str, kind: str, tmp_path: Path) -> None:
    need(shutil.which("virt-xml-validate") is not None, "virt-xml-validate (Debian package libvirt-clients)")
    path = tmp_path / f"{kind}.xml"
    path.write_text(xml)
    done = subprocess.run(["virt-xml-validate", str(path), kind], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("kvm", [True, False], ids=["kvm", "no-kvm"])
@pytest.mark.parametrize("external", [True, False], ids=["external", "admin-only"])
@pytest.mark.parametrize("direct_boot", [True, False], ids=["direct-boot", "disk-boot"])
def test_domain_xml_is_valid(kvm, external, direct_boot, tmp_path):
    networks = ["default", "admin"] + (["external"] if external else [])
    boot = (Path("/var/lib/libvirt/images/overcloud-full.vmlinuz"),
            Path("/var/lib/libvirt/images/overcloud-full.initrd")) if direct_boot else (None, None)
    xml = render_domain("undercloud", 10240, 4, kvm, Path("/var/lib/libvirt/images/undercloud.qcow2"), networks,
                        *boot)
    _validate(xml, "domain", tmp_path)
    assert (f"<domain type='{'kvm' if kvm else 'qemu'}'>" in xml) and (("host-passthrough" in xml) == kvm)
    assert xml.count("<interface type='network'>") == len(networks)
    assert ("root=/dev/sda" in xml) == direct_boot and ("<boot dev='hd'/>" in xml) != direct_boot
    for net in networks:
        assert f"<mac address='{stable_mac('undercloud', net)}'/>" in xml
    # Same inputs, same bytes.
    assert xml == render_domain("undercloud", 10240, 4, kvm, Path("/var/lib/libvirt/images/undercloud.qcow2"),
                                networks, *boot)


@pytest.mark.parametrize("name", ["admin", "external"])
def test_network_xml_is_valid(name, tmp_path):
    _validate(render_network(name), "network", tmp_path)


def _test_conn():
    return libvirt.open("test:///default")


def _options(tmp_path: Path, server=None, **undercloud):
    data = {"work_dir": str(tmp_path / "work"), "image_dir": str(tmp_path / "images"),
            "undercloud": {"driver": "libvirt", "libvirt_uri": "test:///default", "pool": "default-pool",
                           "pool_path": str(tmp_path / "pool"), "name": "uc-test", "wait_timeout": 20.0,
                           **({"host": server.host, "port": server.port, "user": server.user,
                               "ssh_key": str(server.key)} if server else {}),
                           **undercloud}}
    return resolve([Layer("test", data)]).options


def _network_settings(cidr: str = "192.0.2.0/24", external: bool = False) -> NetworkSettings:
    admin = {"installer_vm": {"ip": cidr.replace("0/24", "1")}, "cidr": cidr,
             "dhcp_range": [cidr.replace("0/24", "2"), cidr.replace("0/24", "19")],
             "introspection_range": [cidr.replace("0/24", "100"), cidr.replace("0/24", "120")]}
    nets = {"admin": admin, **({"external": [{"enabled": True}]} if external else {})}
    return NetworkSettings.model_validate({"networks": nets})


def test_an_existing_network_with_another_definition_is_refused(tmp_path):
    driver = driver_for(_options(tmp_path), "192.0.2.1:8787", _network_settings())
    conn = driver.conn
    conn.networkDefineXML("<network><name>admin</name><forward mode='nat'/>"
                          "<ip address='10.9.0.1' netmask='255.255.255.0'/></network>")
    try:
        with pytest.raises(UndercloudError, match="libvirt network 'admin' exists with another definition") as err:
            driver.plan_provision(None, False)
        assert "existing: {'forward': 'nat', 'ips': ['10.9.0.1/255.255.255.0']}" in str(err.value)
        assert "wanted:   {'forward': None, 'ips': []}" in str(err.value)
    finally:
        conn.networkLookupByName("admin").undefine()


def test_an_admin_cidr_clashing_with_a_libvirt_network_is_refused(tmp_path):
    # test:///default's own "default" network is 192.168.122.0/24.
    driver = driver_for(_options(tmp_path), "192.168.122.1:8787", _network_settings("192.168.122.0/24"))
    with pytest.raises(UndercloudError, match=r"admin network 192.168.122.0/24 clashes with libvirt network "
                                              r"'default' \(192.168.122.0/24\)"):
        driver.plan_provision(None, False)


def test_missing_networks_are_planned_for_definition(tmp_path):
    driver = driver_for(_options(tmp_path), "192.0.2.1:8787", _network_settings(external=True))
    plan = driver.plan_provision(None, False)
    assert plan.actions[:2] == ["define libvirt network admin (isolated, bridge br-admin)",
                                "define libvirt network external (isolated, bridge br-external)"]
    assert "<source network='external'/>" in plan.data["domain_xml"]
