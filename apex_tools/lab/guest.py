"""The lab's bootable ``undercloud.qcow2``: Debian 12 (debootstrap, minbase) with systemd,
openssh-server, sudo and python3, booted by direct kernel boot with this host's Debian kernel
and initrd (``linux-image-amd64``), which the VM lab ships in its ``overcloud-full.tar``.

Why direct kernel boot: no bootloader, no partition table, nothing to install in the guest
(a kernel package and initramfs generation would double the build); the image is one ext4
filesystem on the whole disk, like RDO's overcloud-full is one XFS filesystem.
TripleO's own commands are recording stand-ins (``openstack`` writes its calls to
``~/openstack-calls.log``; ``undercloud install`` leaves ``stackrc``), as in the loopback sshd
tests. The image is built once per recipe and kernel and kept in a machine-wide cache
(debootstrap is not byte-reproducible: the cache is what keeps re-runs identical).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from apex_tools.core.errors import LabError
from apex_tools.lab.artifacts import run_tool

# Bump when what the image holds changes.
RECIPE = 2
SUITE = "bookworm"
PACKAGES = ("systemd", "systemd-sysv", "udev", "kmod", "openssh-server", "sudo", "python3", "iproute2", "iptables")
FS_SIZE = "2G"  # sparse; the undercloud target grows the copy to undercloud.disk_size
# The stand-in tree the lab's undercloud.templates_dir names, and ceph-ansible's folder.
TEMPLATES_STAND_IN = "/opt/apex-lab/tripleo-heat-templates"
CEPH_ANSIBLE = "/usr/share/ceph-ansible"
# Kernel modules the playbook's NAT (iptables) and the virtio NIC need after switch_root.
MODULE_DIRS = ("kernel/net/netfilter", "kernel/net/ipv4/netfilter", "kernel/net/ipv6/netfilter", "kernel/lib")

OPENSTACK = """#!/bin/sh
# apex-tools lab stand-in for TripleO's client: records each call; `undercloud install` leaves
# stackrc as the real install does; anything else (`help overcloud deploy`) is not there.
echo "$*" >> "$HOME/openstack-calls.log"
if [ "$1 $2" = "undercloud install" ]; then
    echo "stand-in: installing the undercloud in $(pwd)"
    echo "export OS_CLOUD=undercloud" > stackrc
    exit 0
fi
echo "stand-in: openstack $* is not available in the lab" >&2
exit 1
"""

NETWORK = """[Match]
Name=en* eth*

[Network]
DHCP=ipv4
"""


def kernel_files(boot: Path = Path("/boot")) -> tuple[Path, Path, str]:
    """This host's newest Debian kernel and initrd, and its version (``linux-image-amd64``)."""
    kernels = sorted(boot.glob("vmlinuz-*"))
    for kernel in reversed(kernels):
        version = kernel.name.removeprefix("vmlinuz-")
        initrd = boot / f"initrd.img-{version}"
        if initrd.is_file() and Path("/lib/modules", version).is_dir():
            return kernel, initrd, version
    raise LabError("the VM lab boots this host's Debian kernel, and /boot has no vmlinuz with its initrd and modules",
                   "apt-get install linux-image-amd64 (scripts/debian-packages.txt)")


def cache_dir() -> Path:
    """The machine-wide cache of built guest images (``$XDG_CACHE_HOME/apex-tools/lab``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "apex-tools" / "lab"


def image_key(mirror: str) -> str:
    """What the image is made of: recipe, packages, kernel version, Debian mirror."""
    _, _, version = kernel_files()
    text = f"{RECIPE} {SUITE} {' '.join(PACKAGES)} {version} {mirror} {OPENSTACK} {NETWORK}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def ensure_image(dest: Path, mirror: str) -> bool:
    """``dest`` holds the guest image (copied from the cache, built there first when missing);
    True when it was built just now."""
    cached = cache_dir() / f"undercloud-{image_key(mirror)}.qcow2"
    built = False
    if not cached.is_file():
        cached.parent.mkdir(parents=True, exist_ok=True)
        build_image(cached, mirror)
        built = True
    if not dest.is_file() or dest.stat().st_size != cached.stat().st_size or built:
        partial = dest.with_name(f".{dest.name}.partial")
        shutil.copyfile(cached, partial)
        partial.replace(dest)
    return built


def _configure(root: Path, version: str) -> None:
    (root / "etc/hostname").write_text("undercloud\n")
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n127.0.1.1 undercloud\n")
    (root / "etc/fstab").write_text("/dev/sda / ext4 defaults 0 1\n")
    (root / "etc/systemd/network/10-dhcp.network").write_text(NETWORK)
    stand_in = root / "usr/local/bin/openstack"
    stand_in.write_text(OPENSTACK)
    stand_in.chmod(0o755)
    for folder in (TEMPLATES_STAND_IN, CEPH_ANSIBLE):
        (root / folder.lstrip("/")).mkdir(parents=True, exist_ok=True)
    source = Path("/lib/modules") / version
    for sub in MODULE_DIRS:
        shutil.copytree(source / sub, root / "lib/modules" / version / sub, dirs_exist_ok=True)
    for name in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
        if (source / name).is_file():
            shutil.copy2(source / name, root / "lib/modules" / version / name)
    run_tool(["depmod", "-b", str(root), version], "depmod")
    # Boot faster: nothing the undercloud target needs waits on these.
    for unit in ("apt-daily.timer", "apt-daily-upgrade.timer", "systemd-networkd-wait-online.service"):
        link = root / "etc/systemd/system" / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")
    run_tool(["chroot", str(root), "systemctl", "enable", "systemd-networkd.service", "ssh.service"],
             "enabling systemd-networkd and ssh in the guest")
    shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
    shutil.rmtree(root / "var/lib/apt/lists", ignore_errors=True)


def build_image(dest: Path, mirror: str) -> None:
    """debootstrap, configure, make one ext4 filesystem of it, convert to qcow2 at ``dest``."""
    for tool, package in {"debootstrap": "debootstrap", "mkfs.ext4": "e2fsprogs", "qemu-img": "qemu-utils",
                          "depmod": "kmod"}.items():
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            raise LabError(f"the VM lab needs {tool} to build its undercloud image", f"apt-get install {package}")
    _, _, version = kernel_files()
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".guest-") as tmp:
        root = Path(tmp) / "root"
        run_tool(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(root), mirror],
                 f"debootstrap {SUITE} from {mirror}", timeout=1800)
        _configure(root, version)
        raw = Path(tmp) / "disk.raw"
        run_tool(["truncate", "-s", FS_SIZE, str(raw)], "truncate")
        run_tool(["mkfs.ext4", "-q", "-F", "-L", "img-rootfs", "-d", str(root), str(raw)], "mkfs.ext4")
        out = Path(tmp) / "disk.qcow2"
        run_tool(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(out)], "qemu-img convert")
        out.replace(dest)
