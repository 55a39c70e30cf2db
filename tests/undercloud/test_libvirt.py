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


def test_the_user_mode_forward_is_valid_and_the_only_nic_without_apex_networks(tmp_path):
    """ssh_forward: qemu's user-mode NIC with SSH on 127.0.0.1 only, no libvirt network at all;
    the options that drop the NAT network and the Apex networks say what the domain gets."""
    pool = Path("/var/lib/apex-tools/lab/lab/libvirt/images")
    xml = render_domain("apex-lab-undercloud", 1024, 1, False, pool / "uc.qcow2", [], pool / "overcloud-full.vmlinuz",
                        pool / "overcloud-full.initrd", ssh_forward=8783, console_log=pool / "uc.console.log",
                        as_root=True)
    _validate(xml, "domain", tmp_path)
    assert "<label>+0:+0</label>" in xml
    assert "hostfwd=tcp:127.0.0.1:8783-:22" in xml and "<interface" not in xml
    assert f"mac={stable_mac('apex-lab-undercloud', 'user')}" in xml
    assert f"<log file='{pool}/uc.console.log'/>" in xml
    driver = driver_for(_options(tmp_path, ssh_forward=8783, apex_networks=False), "127.0.0.1:8787",
                        _network_settings(external=True))
    assert driver.apex_networks() == []
    assert "hostfwd=tcp:127.0.0.1:8783-:22" in driver.domain_xml() and "<interface" not in driver.domain_xml()
    assert str(driver.ssh()).endswith("@127.0.0.1:8783")


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


# -- the image, prepared by a real libguestfs launch ------------------------------------------------

CHANGE = "I" + "b" * 40
MOTD_PATCH = """\
--- a/motd
+++ b/motd
@@ -1 +1 @@
-old undercloud
+patched undercloud
"""


@pytest.fixture(scope="module")
def base_image():
    from targets.test_ceph_loop import _have_tools, cached_base_image

    import os

    need(_have_tools(), "libguestfs-tools, qemu-utils, busybox-static and patch")
    os.environ.setdefault("LIBGUESTFS_BACKEND", "direct")
    os.environ.setdefault("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")
    return cached_base_image()


def _guestfish(image: Path, script: str) -> str:
    done = subprocess.run(["guestfish", "--ro", "-a", str(image), "-m", "/dev/sda"], input=script,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _undercloud_patch(work: Path, patch: str) -> None:
    import json

    folder = work / "image_patches" / "undercloud"
    folder.mkdir(parents=True)
    (folder / "01-motd.patch").write_text(patch)
    (folder / "manifest.json").write_text(json.dumps([{
        "project": "openstack/tripleo-common", "change_id": CHANGE, "revision": "def456",
        "file": "01-motd.patch", "target_dir": "/etc/apex-test", "strip": 1}]))


def _image_with_motd(base: Path, tmp_path: Path) -> Path:
    image = tmp_path / "overcloud-full.qcow2"
    shutil.copyfile(base, image)
    done = subprocess.run(["guestfish", "-a", str(image), "-m", "/dev/sda"], capture_output=True, text=True,
                          input="mkdir-p /etc/apex-test\nwrite /etc/apex-test/motd \"old undercloud\\n\"\n")
    assert done.returncode == 0, done.stderr
    return image


@pytest.mark.slow
def test_prepared_image_has_keys_stack_user_sudo_and_the_patch(base_image, tmp_path):
    source = _image_with_motd(base_image, tmp_path)
    key = keygen(tmp_path / "id_rsa")
    work = tmp_path / "work"
    _undercloud_patch(work, MOTD_PATCH)
    dest = tmp_path / "pool" / "undercloud.qcow2"
    prepare_image(source, dest, Path(f"{key}.pub"), "1G", work, "stack")
    out = _guestfish(dest, "cat /root/.ssh/authorized_keys\necho @@\ncat /home/stack/.ssh/authorized_keys\n"
                           "echo @@\ncat /etc/sudoers.d/stack\necho @@\nexists /etc/cloud/cloud-init.disabled\n"
                           "echo @@\ncat /etc/apex-test/motd\necho @@\ngrep ^stack: /etc/passwd\necho @@\n"
                           "exists /tmp/apex-tools-undercloud\n")
    # guestfish ends every answer with a newline of its own.
    root_keys, stack_keys, sudoers, cloud_init, motd, passwd, stage = (c[:-1] for c in out.split("@@\n"))
    public = Path(f"{key}.pub").read_text()
    assert root_keys == stack_keys == public
    assert sudoers == "stack ALL=(ALL) NOPASSWD: ALL\n"
    assert cloud_init == "true" and stage == "false"
    assert motd == "patched undercloud\n"
    assert passwd.startswith("stack:")
    info = subprocess.run(["qemu-img", "info", "--output=json", str(dest)], capture_output=True, text=True)
    assert '"virtual-size": 1073741824' in info.stdout
    assert source.stat().st_size < 1 << 30  # the source was only read


@pytest.mark.slow
def test_an_undercloud_patch_that_does_not_apply_fails_naming_it(base_image, tmp_path):
    source = _image_with_motd(base_image, tmp_path)
    key = keygen(tmp_path / "id_rsa")
    work = tmp_path / "work"
    _undercloud_patch(work, MOTD_PATCH.replace("-old undercloud", "-something else"))
    dest = tmp_path / "pool" / "undercloud.qcow2"
    with pytest.raises(Exception) as err:
        prepare_image(source, dest, Path(f"{key}.pub"), "1G", work, "stack")
    assert CHANGE in str(err.value) and "openstack/tripleo-common" in str(err.value)
    assert not dest.exists()


# -- the lifecycle on test:///default, SSH answered by the loopback sshd ------------------------------

@pytest.fixture
def test_libvirt():
    """Hold test:///default open for the test: its state lives while a connection does."""
    conn = libvirt.open("test:///default")
    before = {d.name() for d in conn.listAllDomains()}, {n.name() for n in conn.listAllNetworks()}
    yield conn
    # Other connections (drivers the test made) may still be open: leave the shared state as found.
    for dom in conn.listAllDomains():
        if dom.name() not in before[0]:
            if dom.isActive():
                dom.destroy()
            dom.undefine()
    for net in conn.listAllNetworks():
        if net.name() not in before[1]:
            if net.isActive():
                net.destroy()
            net.undefine()
    conn.close()


@pytest.mark.slow
def test_define_start_up_to_date_changed_and_recreate(base_image, sshd, registry, test_libvirt, tmp_path):
    from apex_tools.core.run import RunContext, Status
    from apex_tools.targets.undercloud import undercloud
    from undercloud_support import fake_undercloud, network_file

    need(shutil.which("ansible-playbook") is not None, "ansible-playbook")
    fake = fake_undercloud(sshd, tmp_path / "uc")
    images = tmp_path / "images" / "master"
    images.mkdir(parents=True)
    shutil.copyfile(_image_with_motd(base_image, tmp_path), images / "overcloud-full.qcow2")
    for name in ("overcloud-full.vmlinuz", "overcloud-full.initrd"):
        (images / name).write_bytes(b"stand-in " + name.encode())
    network = network_file(tmp_path / "network.yaml")

    def run(memory=2048, **kw):
        data = {"work_dir": str(tmp_path / "work"), "image_dir": str(tmp_path / "images"),
                "network_settings": str(network), "registry": {"address": registry.address},
                # The playbook runs on this host: its containers trust files would land in /etc.
                "signing": {"enabled": False},
                "undercloud": {"driver": "libvirt", "libvirt_uri": "test:///default", "pool": "apex-test",
                               "pool_path": str(tmp_path / "pool"), "name": "uc-test", "memory": memory,
                               "disk_size": "1G", "host": sshd.host, "port": sshd.port, "user": sshd.user,
                               "ssh_key": str(sshd.key), "home": str(fake.home),
                               "templates_dir": str(fake.templates), "ceph_ansible_dir": str(fake.ceph_ansible),
                               "wait_timeout": 20.0}}
        return RunContext(resolve([Layer("test", data)]).options, **kw)

    planned = undercloud(run(dry_run=True))
    assert planned.status is Status.PLANNED
    assert planned.changes[0] == "define libvirt network admin (isolated, bridge br-admin)"
    assert test_libvirt.listDefinedDomains() == [] or "uc-test" not in test_libvirt.listDefinedDomains()

    first = undercloud(run())
    assert first.status is Status.CHANGED, first
    assert "defined domain uc-test" in first.changes and "started domain uc-test" in first.changes
    dom = test_libvirt.lookupByName("uc-test")
    assert dom.isActive()
    xml = dom.XMLDesc(0)
    assert "<source network='admin'/>" in xml and str(tmp_path / "pool" / "uc-test.qcow2") in xml
    assert (tmp_path / "pool" / "overcloud-full.vmlinuz").read_bytes() == b"stand-in overcloud-full.vmlinuz"
    assert test_libvirt.networkLookupByName("admin").isActive()
    assert fake.calls_made() == ["undercloud install"]

    again = undercloud(run())
    assert (again.status, again.changes) == (Status.UP_TO_DATE, ["up to date"])

    with pytest.raises(UndercloudError, match="definition of libvirt domain 'uc-test' changed") as err:
        undercloud(run(memory=4096))
    assert "-  <memory unit='MiB'>2048</memory>" in str(err.value)
    assert "+  <memory unit='MiB'>4096</memory>" in str(err.value)
    assert "--recreate" in err.value.hint
    assert test_libvirt.lookupByName("uc-test").isActive()  # untouched

    recreated = undercloud(run(memory=4096, recreate=True))
    assert recreated.status is Status.CHANGED
    assert recreated.changes[0].startswith("destroyed and undefined domain uc-test")
    assert recreated.changes[1].startswith("forgot its recorded SSH host key")  # a new VM, a new key
    assert "<memory unit='KiB'>4194304</memory>" in test_libvirt.lookupByName("uc-test").XMLDesc(0)
    assert undercloud(run(memory=4096)).status is Status.UP_TO_DATE

    # New undercloud patches: the volume was prepared without them, so the VM must be rebuilt.
    _undercloud_patch(tmp_path / "work", MOTD_PATCH)
    with pytest.raises(UndercloudError, match="prepared from other inputs: undercloud patches changed"):
        undercloud(run(memory=4096))
    rebuilt = undercloud(run(memory=4096, recreate=True))
    assert rebuilt.status is Status.CHANGED and "its volume was prepared just now" in rebuilt.changes[-1]
    assert len(fake.calls_made()) == 3  # a rebuilt VM is configured again
    motd = _guestfish(tmp_path / "pool" / "uc-test.qcow2", "cat /etc/apex-test/motd\n")
    assert motd == "patched undercloud\n\n"
    assert undercloud(run(memory=4096)).status is Status.UP_TO_DATE


def test_the_address_comes_from_the_lease_on_the_nat_network(test_libvirt, tmp_path):
    driver = driver_for(_options(tmp_path, name="uc-lease"), "192.0.2.1:8787", _network_settings())
    with pytest.raises(UndercloudError, match="libvirt domain 'uc-lease' does not exist"):
        driver.lease_address(1)
    # Only the NAT NIC: test:///default leases addresses on networks that have one.
    xml = render_domain("uc-lease", 1024, 1, False, tmp_path / "uc.qcow2", ["default"])
    test_libvirt.defineXML(xml).create()
    address = driver.lease_address(5)  # never contacted: test:///default's fake lease
    assert address.startswith("192.168.122.")


def test_a_dry_run_plans_where_a_real_run_stops(tmp_path):
    from apex_tools.core.run import RunContext, Status
    from apex_tools.targets.undercloud import undercloud

    options = _options(tmp_path, libvirt_uri="test:///nonexistent/unknown.xml")
    planned = undercloud(RunContext(options, dry_run=True))
    assert planned.status is Status.PLANNED
    assert planned.changes[0].startswith("a real run stops here: undercloud.libvirt_uri: cannot connect to "
                                         "test:///nonexistent/unknown.xml")
    with pytest.raises(UndercloudError, match="cannot connect"):
        undercloud(RunContext(options))
