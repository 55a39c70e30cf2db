"""The undercloud's disk image: a copy of the cached image grown to ``undercloud.disk_size`` and
prepared with libguestfs in one launch (SSH keys for root and the stack user, passwordless sudo,
cloud-init off, the undercloud disk-image patches, which fail loudly when one does not apply).
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import subprocess
from pathlib import Path

from apex_tools.core.errors import ImageError
from apex_tools.core.staging import staging_dir
from apex_tools.core.state import fsync_path
from apex_tools.core.workdir import IMAGE_PATCHES_DIR, LIBGUESTFS_MEMORY
from apex_tools.diskimage.customize import Customization, GuestCommandError, customize, sparse_copy
from apex_tools.patching import image_patches
from apex_tools.core.render_safety import checked

LOG = logging.getLogger(__name__)

GUEST_STAGE = "/tmp/apex-tools-undercloud"
# The staging folder's kind (<pool_path>/.undercloud.<pid>.<random>): swept when a killed run left one.
STAGING = "undercloud"

# Grow the root filesystem of a partition-less image (RDO's are XFS on /dev/sda); a partitioned
# image keeps its layout (growing a partition is cloud-init's job, which is off: the space stays free).
GROW_FS = ("if command -v xfs_growfs >/dev/null 2>&1 && xfs_growfs / >/dev/null 2>&1; then :; "
           "elif command -v resize2fs >/dev/null 2>&1; then resize2fs /dev/sda >/dev/null 2>&1 || true; fi")


def disk_size_bytes(size: str) -> int:
    """``undercloud.disk_size`` (``50G``) in bytes."""
    units = {"M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    return int(size[:-1]) * units[size[-1]]


def _virtual_size(image: Path) -> int:
    done = subprocess.run(["qemu-img", "info", "--output=json", str(image)], check=True, capture_output=True, text=True)
    return int(json.loads(done.stdout)["virtual-size"])


def auth_script(user: str) -> str:
    """Shell run in the guest: the stack user, its sudo rule, the keys for root and it, cloud-init off."""
    checked("shell", user, "undercloud.user (the guest's auth script)")
    return f"""set -e
if ! id -u {user} >/dev/null 2>&1; then
    if command -v useradd >/dev/null 2>&1; then useradd -m {user}
    elif command -v adduser >/dev/null 2>&1; then adduser -D {user}
    else  # a minimal image without either: the entries by hand, first free id from 1000
        uid=1000; while grep -q "^[^:]*:[^:]*:$uid:" /etc/passwd 2>/dev/null; do uid=$((uid + 1)); done
        echo "{user}:x:$uid:$uid::/home/{user}:/bin/sh" >> /etc/passwd
        echo "{user}:x:$uid:" >> /etc/group
        mkdir -p /home/{user}
        chown $uid:$uid /home/{user}
    fi
fi
mkdir -p /root/.ssh /home/{user}/.ssh /etc/sudoers.d
cp {GUEST_STAGE}/authorized_keys /root/.ssh/authorized_keys
cp {GUEST_STAGE}/authorized_keys /home/{user}/.ssh/authorized_keys
chmod 700 /root/.ssh /home/{user}/.ssh
chmod 600 /root/.ssh/authorized_keys /home/{user}/.ssh/authorized_keys
chown -R {user}:{user} /home/{user}/.ssh
echo '{user} ALL=(ALL) NOPASSWD: ALL' > /etc/sudoers.d/{user}
chmod 0440 /etc/sudoers.d/{user}
mkdir -p /etc/cloud
touch /etc/cloud/cloud-init.disabled
if [ -f /etc/selinux/config ] && command -v restorecon >/dev/null 2>&1; then
    restorecon -R /root/.ssh /home/{user}/.ssh /etc/sudoers.d/{user} || true
fi
"""


def prepare_image(source: Path, dest: Path, public_key: Path, disk_size: str, work_dir: Path, user: str) -> str:
    """Copy ``source`` to ``dest`` (only when every step succeeded), grown and prepared in one launch.

    Returns a line for the summary when libguestfs had to fall back to TCG, else ""."""
    if not public_key.is_file():
        raise ImageError(f"public key {public_key} is missing", "undercloud.ssh_key needs its .pub beside it")
    pdir = Path(work_dir) / IMAGE_PATCHES_DIR / "undercloud"
    patches = image_patches.load_manifest(pdir)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with staging_dir(dest.parent, STAGING) as stage:
        partial = stage / dest.name
        sparse_copy(source, partial)
        wanted = disk_size_bytes(disk_size)
        if _virtual_size(partial) < wanted:
            subprocess.run(["qemu-img", "resize", "-q", str(partial), str(wanted)], check=True, capture_output=True)
        guest = stage / posixpath.basename(GUEST_STAGE)
        guest.mkdir()
        (guest / "authorized_keys").write_text(public_key.read_text())
        (guest / "auth.sh").write_text(auth_script(user))
        ops = Customization(base=stage)
        ops.run_command(GROW_FS, f"grow the root filesystem to {disk_size}")
        if patches:
            for patch in patches:
                (guest / patch.file).write_bytes((pdir / patch.file).read_bytes())
            (guest / "apply-patches.sh").write_text(image_patches.apply_script(patches, GUEST_STAGE))
        ops.copy_in(guest, posixpath.dirname(GUEST_STAGE))
        ops.run_command(f"sh {GUEST_STAGE}/auth.sh", f"SSH keys for root and {user}, sudo, cloud-init off")
        if patches:
            ops.run_command(f"sh {GUEST_STAGE}/apply-patches.sh", f"apply {len(patches)} undercloud patch(es)")
        ops.delete(GUEST_STAGE)
        try:
            note = customize(partial, ops, memory=Path(work_dir) / LIBGUESTFS_MEMORY).note()
        except GuestCommandError as exc:
            LOG.debug("virt-customize output:\n%s", exc.output)
            raise image_patches.failure(exc.output, patches, dest.name) or exc from None
        fsync_path(partial)
        os.replace(partial, dest)
    return note
