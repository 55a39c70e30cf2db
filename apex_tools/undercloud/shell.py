"""Run one shell command on the undercloud: locally (no SSH target), else through ``ssh``."""

from __future__ import annotations

import shutil
import subprocess

from apex_tools.core.errors import UndercloudError
from apex_tools.undercloud.ssh import SSHTarget


def ssh_argv(ssh: SSHTarget, command: str) -> list[str]:
    """``ssh`` with the target's port, user and key, never prompting (BatchMode)."""
    return ["ssh", "-p", str(ssh.port), "-i", str(ssh.key), "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
            f"{ssh.user}@{ssh.host}", command]


def run_shell(ssh: SSHTarget | None, command: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run ``command`` with ``bash -c`` on the undercloud; stdout and stderr captured, never raises on exit code."""
    if ssh is None:
        argv = ["bash", "-c", command]
    else:
        if shutil.which("ssh") is None:
            raise UndercloudError("ssh is not installed", "apt-get install openssh-client")
        argv = ssh_argv(ssh, command)
    try:
        return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        where = "this host" if ssh is None else f"{ssh.user}@{ssh.host}:{ssh.port}"
        raise UndercloudError(f"command on the undercloud ({where}) did not finish within {timeout:.0f} s: {command}",
                              "check that the undercloud is up and not overloaded") from None
