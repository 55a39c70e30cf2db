"""The RDO-like artifacts the lab's mirror serves: ``overcloud-full.tar`` (a small qcow2 holding
one XFS filesystem with no partition table, like RDO's, plus kernel and initrd) and
``ironic-python-agent.tar``, each with an ``.md5`` sidecar.

Same inputs, same bytes: the filesystem gets a fixed UUID and every inode's times are zeroed
with ``xfs_db`` after ``mkfs.xfs -p`` populated it; tar members have fixed times and owners.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from apex_tools.core.errors import LabError
from apex_tools.core.state import atomic_write
from apex_tools.core.workdir import IPA_TAR, OVERCLOUD_QCOW2, OVERCLOUD_TAR
from apex_tools.lab.rootfs import Entry, base_entries, text, with_parents

FS_UUID = "6d1c7a0e-1c8e-4a57-9d3e-2b8f5a2c1a4b"
FS_SIZE = "512M"  # mkfs.xfs's minimum is 300 MB; the qcow2 keeps only what is written
TOOLS = {"mkfs.xfs": "xfsprogs", "xfs_db": "xfsprogs", "qemu-img": "qemu-utils"}
# Bump when what the artifacts hold changes, so a lab made before is generated again.
RECIPE = 2

# The puppet module file the bundled disk-image patch changes (config/patches/lab/).
PUPPET_FILE = "etc/puppet/modules/tripleo/manifests/profile/base/lab.pp"
PUPPET_TEXT = """\
# apex-tools lab stand-in for a puppet-tripleo profile.
class tripleo::profile::base::lab (
  $step = 1,
) {
  if $step >= 1 {
    notice('lab profile, step 1')
  }
}
"""


def disk_entries() -> list[Entry]:
    """What the overcloud disk image holds: the shared base, fstab, systemd folders, puppet."""
    return with_parents(base_entries() + [
        text("etc/fstab", "LABEL=img-rootfs / xfs defaults 0 1\n"),
        text("etc/machine-id", ""),
        text(PUPPET_FILE, PUPPET_TEXT),
        *(Entry(p, "dir") for p in ("etc/systemd/system", "etc/systemd/system/multi-user.target.wants",
                                     "srv", "usr/lib/systemd/system")),
    ])


def _prototype(entries: list[Entry], staging: Path) -> str:
    """An ``mkfs.xfs -p`` prototype of ``entries`` (inline data staged as files under ``staging``)."""
    children: dict[str, list[Entry]] = {}
    for entry in entries:
        parent = entry.path.rsplit("/", 1)[0] if "/" in entry.path else ""
        children.setdefault(parent, []).append(entry)

    lines = ["/dev/null", "0 0", "d--755 0 0"]

    def emit(folder_path: str, depth: int) -> None:
        for entry in sorted(children.get(folder_path, []), key=lambda e: e.path):
            name = entry.path.rsplit("/", 1)[-1]
            pad = " " * depth
            mode = f"{entry.mode & 0o7777:o}".rjust(3, "0")[-3:]
            if entry.kind == "dir":
                # The prototype format has no sticky bit: /tmp is 0777 there.
                lines.append(f"{pad}{name} d--{mode} 0 0")
                emit(entry.path, depth + 1)
                lines.append(f"{pad}$")
            elif entry.kind == "link":
                lines.append(f"{pad}{name} l--{mode} 0 0 {entry.target}")
            else:
                source = entry.source
                if not source:
                    staged = staging / hashlib.sha256(entry.path.encode()).hexdigest()[:16]
                    staged.write_bytes(entry.data)
                    source = str(staged)
                lines.append(f"{pad}{name} ---{mode} 0 0 {source}")

    emit("", 1)
    lines.append("$")
    return "\n".join(lines) + "\n"


def run_tool(argv: list[str], what: str, timeout: float | None = None) -> str:
    """Run a build tool; a failure is a LabError naming the step and the tool's last words."""
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise LabError(f"{what} failed (exit {done.returncode}): {(done.stderr or done.stdout).strip()[-800:]}",
                       f"command: {' '.join(argv[:3])} ...")
    return done.stdout


def _zero_times(raw: Path) -> None:
    """Set every inode's times to the epoch (and recompute its checksum): the only bytes that differ."""
    sb = run_tool(["xfs_db", "-r", "-c", "sb 0", "-c", "p rootino rbmino rsumino", str(raw)], "xfs_db (superblock)")
    inodes = [line.split("=")[1].strip() for line in sb.splitlines() if "=" in line]
    listed = run_tool(["xfs_db", "-r", "-c", "blockget -n", "-c", "ncheck", str(raw)], "xfs_db (inode list)")
    inodes += [line.split()[0] for line in listed.splitlines() if line.strip()]
    args: list[str] = []
    for inode in dict.fromkeys(inodes):
        args += ["-c", f"inode {inode}"]
        for stamp in ("core.atime", "core.mtime", "core.ctime", "v3.crtime"):
            args += ["-c", f"write {stamp}.sec 0", "-c", f"write {stamp}.nsec 0"]
    run_tool(["xfs_db", "-x", *args, str(raw)], "xfs_db (fixing inode times)")


def make_qcow2(dest: Path) -> None:
    """Write the overcloud disk image: XFS on the whole disk, converted to qcow2."""
    for tool, package in TOOLS.items():
        if shutil.which(tool) is None:
            raise LabError(f"the lab needs {tool} to make its disk image", f"apt-get install {package}")
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".disk-") as tmp:
        staging = Path(tmp) / "files"
        staging.mkdir()
        proto = Path(tmp) / "proto"
        proto.write_text(_prototype(disk_entries(), staging))
        raw = Path(tmp) / "disk.raw"
        run_tool(["truncate", "-s", FS_SIZE, str(raw)], "truncate")
        run_tool(["mkfs.xfs", "-q", "-f", "-L", "img-rootfs", "-m", f"uuid={FS_UUID}", "-p", str(proto), str(raw)],
             "mkfs.xfs")
        _zero_times(raw)
        out = Path(tmp) / "disk.qcow2"
        run_tool(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(out)], "qemu-img convert")
        out.replace(dest)


def tar_bytes(members: dict[str, Path | bytes]) -> bytes:
    """A plain tar of ``members`` (name → file or bytes), in order, with fixed times and owners."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, body in members.items():
            data = body.read_bytes() if isinstance(body, Path) else body
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _stand_in(kind: str) -> bytes:
    # Not bootable: nothing boots them in the lab; fetch-images only moves and verifies them.
    return f"apex-tools lab stand-in {kind}\n".encode() * 64


def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_artifacts(folder: Path, boot: tuple[Path, Path] | None = None) -> list[str]:
    """Write both tarballs and their ``.md5`` sidecars into ``folder``; the file names written.

    ``boot``: a real kernel and initrd for overcloud-full.tar (the VM lab boots them), else stand-ins.
    """
    folder.mkdir(parents=True, exist_ok=True)
    qcow2 = folder / f".{OVERCLOUD_QCOW2}"
    make_qcow2(qcow2)
    stem = OVERCLOUD_QCOW2.removesuffix(".qcow2")
    kernel, initrd = boot or (_stand_in("kernel"), _stand_in("initrd"))
    tarballs = {
        OVERCLOUD_TAR: tar_bytes({OVERCLOUD_QCOW2: qcow2, f"{stem}.vmlinuz": kernel, f"{stem}.initrd": initrd}),
        IPA_TAR: tar_bytes({"ironic-python-agent.kernel": _stand_in("agent kernel"),
                            "ironic-python-agent.initramfs": _stand_in("agent initramfs")}),
    }
    qcow2.unlink()
    written = []
    for name, data in tarballs.items():
        # The sidecar goes last: a mirror never offers a checksum of a file not yet there.
        atomic_write(folder / name, data, durable=False)
        atomic_write(folder / f"{name}.md5", f"{hashlib.md5(data).hexdigest()}  {name}\n", durable=False)
        written += [name, f"{name}.md5"]
    return written
