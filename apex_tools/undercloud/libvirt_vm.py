"""The ``libvirt`` driver: the undercloud is a VM on this host, as in Apex's virtual deployments.

The domain and the Apex networks are rendered from Jinja2 templates in ``build/undercloud/``.
The rendered domain XML is the definition whose fingerprint the target records: the same
definition with a running VM is "up to date"; a changed one stops with the difference unless
``--recreate`` (which says first that it destroys, undefines and removes the volume). An
existing network with another definition, or one whose CIDR clashes with the admin network,
is an error naming both, never redefined.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import ipaddress
import json
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apex_tools.core.config import Options
from apex_tools.core.errors import UndercloudError
from apex_tools.core.settings import NetworkSettings
from apex_tools.core.templates import render
from apex_tools.core.state import atomic_write, file_stamp, fingerprint
from apex_tools.core.workdir import IMAGE_PATCHES_DIR, OVERCLOUD_QCOW2, UNDERCLOUD_QCOW2, artifact_dir
from apex_tools.patching import image_patches
from apex_tools.undercloud.base import Provision, SSHUndercloud, known_hosts_file
from apex_tools.undercloud.image import prepare_image
from apex_tools.undercloud.ssh import SSHTarget

LOG = logging.getLogger(__name__)

DOMAIN_TEMPLATE = "domain.xml.j2"
NETWORK_TEMPLATE = "network.xml.j2"
KVM_PROBE_TIMEOUT = 20.0


@dataclass(frozen=True)
class Nic:
    network: str
    mac: str


def stable_mac(domain: str, network: str) -> str:
    """A locally administered MAC (libvirt's 52:54:00 prefix) derived from the domain and network names."""
    digest = hashlib.sha256(f"{domain}/{network}".encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


def _render(template: str, **values: Any) -> str:
    # core/templates: values checked for XML (no control characters) and escaped.
    return render("build", f"undercloud/{template}", trim=True, **values)


def render_domain(name: str, memory: int, vcpus: int, kvm: bool, volume: Path, networks: list[str],
                  kernel: Path | None = None, initrd: Path | None = None, ssh_forward: int = 0,
                  console_log: Path | None = None, as_root: bool = False) -> str:
    """The domain XML: one NIC per network (NAT first), stable MACs, direct kernel boot when given;
    with ``ssh_forward`` a first NIC on user-mode networking with SSH on 127.0.0.1:<ssh_forward>."""
    nics = [Nic(net, stable_mac(name, net)) for net in networks]
    return _render(
        DOMAIN_TEMPLATE, name=name, memory=memory, vcpus=vcpus, domain_type="kvm" if kvm else "qemu", volume=str(volume),
        nics=nics, kernel=str(kernel) if kernel else "", initrd=str(initrd) if initrd else "",
        ssh_forward=ssh_forward, forward_mac=stable_mac(name, "user"),
        console_log=str(console_log) if console_log else "", as_root=as_root)


def render_network(name: str) -> str:
    """An isolated Apex network (admin, external) with its own bridge."""
    return _render(NETWORK_TEMPLATE, name=name, bridge=f"br-{name}"[:15])


def kvm_usable() -> bool:
    """True when /dev/kvm can be opened and a guest kernel actually runs under it (else the
    domain runs under TCG, type qemu). Nested KVM can hang: a bounded probe tells, once a boot."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot_id = "unknown"
    record = Path(tempfile.gettempdir()) / f"apex-tools-kvm-probe-{boot_id}.json"
    with contextlib.suppress(OSError, ValueError, KeyError):
        return bool(json.loads(record.read_text())["kvm"])
    works = probe_kvm()
    atomic_write(record, json.dumps({"kvm": works}) + "\n", durable=False)
    return works


def probe_kvm(timeout: float = KVM_PROBE_TIMEOUT) -> bool:
    """Boot this host's kernel under KVM with no root filesystem: it panics and qemu exits (about a
    second under working KVM); no exit within ``timeout`` means KVM hangs here."""
    kernels = sorted(Path("/boot").glob("vmlinuz-*"))
    qemu = shutil.which("qemu-system-x86_64")
    if not kernels or qemu is None:
        return True  # nothing to probe with: trust /dev/kvm
    argv = [qemu, "-accel", "kvm", "-M", "pc", "-m", "256", "-nodefaults", "-display", "none", "-no-reboot",
            "-kernel", str(kernels[-1]), "-append", "panic=-1 loglevel=0"]
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        LOG.warning("KVM: a guest kernel did not finish within %.0f s under /dev/kvm (nested KVM hangs "
                    "here); the VM runs under TCG", timeout)
        return False
    return done.returncode == 0


def external_enabled(ns: NetworkSettings) -> bool:
    """Whether the network settings enable the external network (Apex: a list of one mapping)."""
    ext = ns.networks.external
    first = ext[0] if isinstance(ext, list) and ext else ext
    return bool(isinstance(first, dict) and first.get("enabled", False))


def _shape(xml: str) -> dict[str, Any]:
    """What makes two network definitions the same for us: forward mode and addresses."""
    root = ET.fromstring(xml)
    forward = root.find("forward")
    ips = sorted(f"{ip.get('address')}/{ip.get('prefix') or ip.get('netmask')}" for ip in root.findall("ip"))
    return {"forward": forward.get("mode", "nat") if forward is not None else None, "ips": ips}


def _networks_of(xml: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    nets = []
    for ip in ET.fromstring(xml).findall("ip"):
        mask = ip.get("prefix") or ip.get("netmask")
        if ip.get("address") and mask:
            nets.append(ipaddress.ip_network(f"{ip.get('address')}/{mask}", strict=False))
    return nets


def is_partitioned(image: Path) -> bool:
    """True when the image's first sector carries a partition table (MBR or GPT's protective MBR)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "sector0"
        subprocess.run(["qemu-img", "dd", "-O", "raw", "bs=512", "count=1", f"if={image}", f"of={out}"],
                       check=True, capture_output=True)
        data = out.read_bytes()
    return len(data) >= 512 and data[510:512] == b"\x55\xaa"


def wait_for_banner(host: str, port: int, timeout: float, on_wait: Any = None) -> None:
    """Wait until ``host:port`` sends an SSH banner; raises after ``timeout`` seconds."""
    started = time.monotonic()
    report = 0.0  # tell on_wait every ~10 s, not at every 2 s attempt
    while True:
        why = "no SSH banner yet (the guest is booting)"
        try:
            with socket.create_connection((host, port), timeout=5) as sock:
                sock.settimeout(5)
                if sock.recv(4) == b"SSH-":
                    return
        except ConnectionRefusedError:
            why = f"nothing listens on {host}:{port} (is the domain running?)"
        except OSError:
            pass
        elapsed = time.monotonic() - started
        if elapsed > timeout:
            raise UndercloudError(f"SSH {host}:{port}: {why} after {timeout:.0f} s",
                                  "look at the VM's console log beside its volume; raise undercloud.wait_timeout "
                                  "for a slow (TCG) boot")
        if on_wait and elapsed >= report:
            on_wait(why, elapsed)
            report = elapsed + 10
        time.sleep(2)


class LibvirtUndercloud(SSHUndercloud):
    """A VM on this host; its address comes from its DHCP lease on the NAT network (or undercloud.host)."""

    name = "libvirt"

    def __init__(self, options: Options, registry_address: str, network_settings: NetworkSettings | None = None,
                 os_version: str = "master") -> None:
        super().__init__(options, registry_address)
        self.network_settings = network_settings
        self.os_version = os_version
        self._conn: Any = None
        self._address: str | None = None

    # -- libvirt ---------------------------------------------------------------------------
    @property
    def conn(self) -> Any:
        if self._conn is None:
            import libvirt

            uri = self.options.undercloud.libvirt_uri
            # Errors come back as exceptions (with their message); libvirt's default handler
            # would also print each one to stderr.
            libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
            try:
                self._conn = libvirt.open(uri)
            except libvirt.libvirtError as exc:
                raise UndercloudError(f"undercloud.libvirt_uri: cannot connect to {uri}: {exc}",
                                      "start libvirtd (or mount its socket), or set undercloud.libvirt_uri") from None
        return self._conn

    def _lookup(self, kind: str, name: str) -> Any:
        import libvirt

        try:
            return getattr(self.conn, f"{kind}LookupByName")(name)
        except libvirt.libvirtError:
            return None

    def _lookup_domain(self) -> Any:
        import libvirt

        try:
            return self.conn.lookupByName(self.options.undercloud.name)
        except libvirt.libvirtError:
            return None

    # -- what the VM is made of --------------------------------------------------------------
    def apex_networks(self) -> list[str]:
        if not self.options.undercloud.apex_networks:
            return []
        nets = ["admin"]
        if self.network_settings is not None and external_enabled(self.network_settings):
            nets.append("external")
        return nets

    def volume_path(self) -> Path:
        return Path(self.options.undercloud.pool_path) / f"{self.options.undercloud.name}.qcow2"

    def source_image(self) -> Path:
        folder = artifact_dir(self.options, self.os_version)
        cached = folder / UNDERCLOUD_QCOW2
        return cached if (self.options.fetch.undercloud_image or cached.is_file()) else folder / OVERCLOUD_QCOW2

    def boot_files(self, partitioned: bool) -> tuple[Path | None, Path | None]:
        """overcloud-full's kernel and initrd beside the volume for a partition-less image."""
        if partitioned:
            return None, None
        pool = Path(self.options.undercloud.pool_path)
        return pool / "overcloud-full.vmlinuz", pool / "overcloud-full.initrd"

    def kvm(self) -> bool:
        """Whether the domain runs under KVM (else TCG): probed for a qemu connection only."""
        return self.options.undercloud.libvirt_uri.startswith("qemu") and kvm_usable()

    def domain_xml(self, partitioned: bool = False) -> str:
        uc = self.options.undercloud
        kernel, initrd = self.boot_files(partitioned)
        nat = [] if uc.ssh_forward else [uc.nat_network]
        console = Path(uc.pool_path) / f"{uc.name}.console.log" if uc.ssh_forward else None
        return render_domain(uc.name, uc.memory, uc.vcpus, self.kvm(), self.volume_path(),
                             [*nat, *self.apex_networks()], kernel, initrd, uc.ssh_forward, console,
                             uc.qemu_as_root)

    # -- the check ---------------------------------------------------------------------------
    def check_networks(self) -> list[str]:
        """Networks to define; raises when an existing one differs or clashes with the admin CIDR."""
        to_define = []
        for net in self.apex_networks():
            wanted = render_network(net)
            found = self._lookup("network", net)
            if found is None:
                to_define.append(net)
                continue
            have = found.XMLDesc(0)
            if _shape(have) != _shape(wanted):
                raise UndercloudError(
                    f"libvirt network {net!r} exists with another definition:\n  existing: {_shape(have)}\n"
                    f"  wanted:   {_shape(wanted)}",
                    f"remove it (virsh net-destroy {net}; virsh net-undefine {net}) or make it isolated; "
                    "apex never redefines a network",
                )
        if self.network_settings is not None:
            admin = self.network_settings.admin.cidr
            for other in self.conn.listAllNetworks():
                for cidr in _networks_of(other.XMLDesc(0)):
                    if cidr.version == admin.version and cidr.overlaps(admin):
                        raise UndercloudError(
                            f"the admin network {admin} clashes with libvirt network {other.name()!r} ({cidr})",
                            "change networks.admin.cidr in the network settings, or that libvirt network",
                        )
        return to_define

    def plan_provision(self, recorded: Mapping[str, Any] | None, recreate: bool) -> Provision:
        recorded = recorded or {}
        partitioned = bool(recorded.get("partitioned", False))
        source = self.source_image()
        if source.is_file():
            partitioned = is_partitioned(source)
        xml = self.domain_xml(partitioned)
        fp = fingerprint({"domain": xml})
        plan = Provision(fingerprint=fp, data={"domain_xml": xml, "partitioned": partitioned,
                                               "image_inputs": self.image_inputs()})
        networks = self.check_networks()
        plan.steps += [f"network:{n}" for n in networks]
        plan.actions += [f"define libvirt network {n} (isolated, bridge br-{n})" for n in networks]
        dom = self._lookup_domain()
        name = self.options.undercloud.name
        create = [f"prepare volume {self.volume_path()} from {source.name} ({self.options.undercloud.disk_size}, "
                  "SSH keys, stack user, cloud-init off, undercloud patches)",
                  f"define domain {name} and start it"]
        if dom is None:
            plan.steps += ["volume", "define", "start"]
            plan.actions += create
            return plan
        old = recorded.get("domain_xml")
        if old != xml:
            if not recreate:
                if old is None:
                    raise UndercloudError(
                        f"libvirt domain {name!r} exists but this work dir did not create it",
                        "re-run with --recreate to destroy, undefine and replace it (its volume is removed), "
                        "or set undercloud.name to another name")
                diff = "".join(difflib.unified_diff(old.splitlines(True), xml.splitlines(True), "recorded", "wanted"))
                raise UndercloudError(f"the definition of libvirt domain {name!r} changed:\n{diff}",
                                      "re-run with --recreate to destroy, undefine and rebuild it (its volume is removed)")
            plan.steps += ["destroy", "volume", "define", "start"]
            plan.actions += [f"--recreate: destroy and undefine domain {name} and remove its volume "
                             f"{self.volume_path()}", *create]
            return plan
        was = recorded.get("image_inputs")
        changed = sorted(k for k in plan.data["image_inputs"] if was is not None and was.get(k) != plan.data["image_inputs"][k])
        if changed:
            if not recreate:
                raise UndercloudError(
                    f"the volume of libvirt domain {name!r} was prepared from other inputs: {', '.join(changed)} "
                    "changed", "re-run with --recreate to destroy, undefine and rebuild it (its volume is removed)")
            plan.steps += ["destroy", "volume", "define", "start"]
            plan.actions += [f"--recreate: destroy and undefine domain {name} and remove its volume "
                             f"{self.volume_path()} ({', '.join(changed)} changed)", *create]
            return plan
        if not dom.isActive():
            plan.steps.append("start")
            plan.actions.append(f"start domain {name} (defined, not running)")
        return plan

    def image_inputs(self) -> dict[str, Any]:
        """What the volume is prepared from (each a short, comparable value, kept in the record)."""
        source = self.source_image()
        pdir = Path(self.options.work_dir) / IMAGE_PATCHES_DIR / "undercloud"
        public = Path(f"{self.options.undercloud.key_path}.pub")
        return {
            "source image": f"{source} {file_stamp(source)}",
            "SSH key": hashlib.sha256(public.read_bytes()).hexdigest() if public.is_file() else None,
            "undercloud patches": fingerprint(image_patches.digests(pdir, image_patches.load_manifest(pdir))),
            "disk size": self.options.undercloud.disk_size,
            "user": self.options.undercloud.user,
        }

    # -- apply -------------------------------------------------------------------------------
    def provision(self, plan: Provision, progress: Any) -> list[str]:
        changes = []
        name = self.options.undercloud.name
        for step in plan.steps:
            if step.startswith("network:"):
                net = step.split(":", 1)[1]
                network = self.conn.networkDefineXML(render_network(net))
                network.setAutostart(True)
                network.create()
                changes.append(f"defined and started libvirt network {net}")
            elif step == "destroy":
                dom = self._lookup_domain()
                LOG.warning("--recreate: destroying domain %s and removing its volume %s", name, self.volume_path())
                if dom is not None:
                    if dom.isActive():
                        dom.destroy()
                    dom.undefine()
                self.volume_path().unlink(missing_ok=True)
                changes.append(f"destroyed and undefined domain {name}, removed {self.volume_path()}")
                if forgotten := self.forget_host_key():  # the new VM has a new host key
                    changes.append(f"forgot its recorded SSH host key ({forgotten})")
            elif step == "volume":
                changes.append(self.prepare_volume(bool(plan.data.get("partitioned"))))
                plan.data["image_inputs"] = self.image_inputs()  # the key may have been generated just now
            elif step == "define":
                self.conn.defineXML(plan.data["domain_xml"])
                changes.append(f"defined domain {name}")
                how = "KVM" if "type='kvm'" in plan.data["domain_xml"] else "TCG (KVM is not usable here)"
                changes.append(f"domain {name} runs under {how}")
            elif step == "start":
                dom = self._lookup_domain()
                if not dom.isActive():
                    dom.create()
                changes.append(f"started domain {name}")
        return changes

    def prepare_volume(self, partitioned: bool) -> str:
        source = self.source_image()
        if not source.is_file():
            raise UndercloudError(f"undercloud image {source} is missing",
                                  "run fetch-images first (fetch.undercloud_image for undercloud.qcow2)")
        key = self.ensure_key()
        dest = self.volume_path()
        note = prepare_image(source, dest, Path(f"{key}.pub"), self.options.undercloud.disk_size,
                             self.options.work_dir, self.options.undercloud.user)
        if not partitioned:
            # overcloud-full's kernel and initrd (fetch-images unpacked them beside the images).
            folder = artifact_dir(self.options, self.os_version)
            for dst in self.boot_files(False):
                src = folder / dst.name if dst is not None else None
                if src is None or not src.is_file():
                    raise UndercloudError(f"{source.name} has no partition table and {src} is missing",
                                          "the VM boots overcloud-full's kernel and initrd: run fetch-images")
                shutil.copyfile(src, dst)
        self._refresh_pool()
        return f"prepared volume {dest} from {source.name}" + (f" ({note})" if note else "")

    def _refresh_pool(self) -> None:
        import libvirt

        uc = self.options.undercloud
        pool = self._lookup("storagePool", uc.pool)
        if pool is None:
            xml = f"<pool type='dir'><name>{uc.pool}</name><target><path>{uc.pool_path}</path></target></pool>"
            pool = self.conn.storagePoolDefineXML(xml, 0)
            pool.setAutostart(True)
        try:
            if not pool.isActive():
                pool.create()
            pool.refresh(0)
        except libvirt.libvirtError as exc:
            LOG.debug("storage pool %s: %s", uc.pool, exc)

    def ensure_key(self) -> Path:
        """The configured key (``undercloud.ssh_key``), generated as an RSA key, like Apex's id_rsa, when missing."""
        key = self.options.undercloud.key_path
        if not key.is_file():
            key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "4096", "-N", "", "-f", str(key)],
                           check=True, stdin=subprocess.DEVNULL)
        return key

    # -- reaching it ---------------------------------------------------------------------------
    def _leases(self, dom: Any) -> list[str]:
        """IPv4 addresses leased to the domain's NAT NIC: the NAT network's leases for its MAC,
        else (drivers without lease queries) the domain's interface addresses from leases."""
        import libvirt

        uc = self.options.undercloud
        mac = stable_mac(uc.name, uc.nat_network)
        network = self._lookup("network", uc.nat_network)
        try:
            if network is not None:
                return [lease["ipaddr"] for lease in network.DHCPLeases(mac)
                        if lease.get("type") == libvirt.VIR_IP_ADDR_TYPE_IPV4]
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
                return []
        try:
            found = dom.interfaceAddresses(libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE)
        except libvirt.libvirtError:
            return []
        return [str(addr["addr"]) for iface in found.values() if (iface.get("hwaddr") or mac) == mac
                for addr in iface.get("addrs") or [] if addr.get("type") == libvirt.VIR_IP_ADDR_TYPE_IPV4]

    def lease_address(self, timeout: float) -> str:
        """The VM's first IPv4 address from its DHCP lease on the NAT network, waited for."""
        dom = self._lookup_domain()
        if dom is None:
            raise UndercloudError(f"libvirt domain {self.options.undercloud.name!r} does not exist",
                                  "run the undercloud target to create it")
        deadline = time.monotonic() + timeout
        while True:
            found = self._leases(dom)
            if found:
                return found[0]
            if time.monotonic() > deadline:
                raise UndercloudError(
                    f"domain {self.options.undercloud.name}: no DHCP lease on network "
                    f"{self.options.undercloud.nat_network} within {timeout:.0f} s",
                    "check the VM booted (virsh console) and the NAT network's DHCP")
            time.sleep(2)

    def wait(self, on_wait: Any = None) -> None:
        # The lease first (the VM booted and asked for an address), then SSH answering;
        # with undercloud.host or ssh_forward set, that address is used and no lease is asked for.
        uc = self.options.undercloud
        if uc.ssh_forward:
            # qemu accepts on the forwarded port long before the guest's sshd answers: wait for
            # the banner with a plain socket (paramiko would log each early attempt as an error).
            wait_for_banner("127.0.0.1", uc.ssh_forward, uc.wait_timeout, on_wait)
        elif not uc.host:
            self._address = self.lease_address(uc.wait_timeout)
        super().wait(on_wait)

    def ssh(self) -> SSHTarget:
        uc = self.options.undercloud
        if uc.ssh_forward:
            # The forwarded port is checked against the same pinned host key as any undercloud's.
            path, pin = known_hosts_file(self.options)
            return SSHTarget("127.0.0.1", uc.ssh_forward, uc.user, uc.key_path, path, pin)
        host = uc.host or self._address
        if host is None:
            host = self._address = self.lease_address(uc.wait_timeout)
        return self.ssh_target(host, uc.key_path)
