"""What the undercloud says about the overcloud: its stack's status, its tripleo-heat-templates,
the stack user's home."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

from apex_tools.catalog.tht import HeatTemplates, heat_templates, heat_templates_from_dir
from apex_tools.core.errors import UndercloudError
from apex_tools.overcloud.command import THT_ROOT
from apex_tools.undercloud.base import Undercloud
from apex_tools.undercloud.shell import ssh_argv

STACK = "overcloud"
COMPLETE = ("CREATE_COMPLETE", "UPDATE_COMPLETE")


def stack_home(undercloud: Undercloud, setting: str) -> str:
    """The stack user's home on the undercloud: the setting, else the connected user's home there."""
    if setting:
        return setting.rstrip("/") or "/"
    user = undercloud.options.undercloud.user
    found = undercloud.run(f"getent passwd {shlex.quote(user)} | cut -d: -f6")
    home = found.stdout.strip()
    if found.status != 0 or not home:
        raise UndercloudError(f"the undercloud has no user {user!r} (no home directory found)",
                              "set undercloud.user to the stack user, or undercloud.home to its home")
    return home


def stack_status(undercloud: Undercloud, stackrc: str) -> str | None:
    """The overcloud stack's status (``CREATE_COMPLETE``, ``UPDATE_FAILED``, ...), None when there is none."""
    done = undercloud.run(
        f". {shlex.quote(stackrc)} && openstack stack show {STACK} -f value -c stack_status", timeout=120.0)
    if done.status == 0:
        return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else None
    said = (done.stderr + done.stdout).strip()
    if "not found" in said.lower():
        return None
    raise UndercloudError(f"cannot read the status of stack {STACK!r} on the undercloud: {said.splitlines()[-1:] or said}",
                          f"check {stackrc} and that the undercloud's heat answers (openstack stack list)")


def undercloud_templates(undercloud: Undercloud, os_version: str, work_dir: Path,
                         present: bool) -> tuple[HeatTemplates, str]:
    """The undercloud's own tripleo-heat-templates when it has them (``present``, as
    ``Undercloud.probe`` found), else the bundled facts; and which."""
    if not present:
        return heat_templates(os_version), f"bundled tripleo-heat-templates facts for {os_version}"
    ssh = undercloud.ssh()
    if ssh is None:
        return heat_templates_from_dir(Path(THT_ROOT), os_version), f"{THT_ROOT} on the undercloud"
    dest = Path(work_dir) / "tht" / os_version
    _copy_tree(ssh_argv(ssh, f"tar -C {THT_ROOT} -cf - ."), dest)
    return heat_templates_from_dir(dest, os_version), f"{THT_ROOT} on the undercloud (copied to {dest})"


def _copy_tree(remote_tar: list[str], dest: Path) -> None:
    """Unpack a tar stream from the undercloud into ``dest`` (replaced only when complete)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    try:
        with subprocess.Popen(remote_tar, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) as source:
            unpack = subprocess.run(["tar", "-C", str(partial), "-xf", "-"], stdin=source.stdout,
                                    capture_output=True, timeout=600)
            _, err = source.communicate(timeout=600)
        if source.returncode or unpack.returncode:
            why = (err or unpack.stderr).decode(errors="replace").strip()
            raise UndercloudError(f"cannot copy {THT_ROOT} from the undercloud: {why}",
                                  "check the SSH connection and that tar is installed there")
        shutil.rmtree(dest, ignore_errors=True)
        partial.rename(dest)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
