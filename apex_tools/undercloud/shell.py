"""The ``ssh`` command line of an SSH target, for streams paramiko's sessions do not carry (a tar of a tree)."""

from __future__ import annotations

from apex_tools.undercloud.ssh import SSHTarget, pin_host_key


def ssh_argv(ssh: SSHTarget, command: str) -> list[str]:
    """``ssh`` with the target's port, user and key, never prompting, checking the pinned host key
    (recorded first when this is the first contact)."""
    pin_host_key(ssh)
    return ["ssh", "-p", str(ssh.port), "-i", str(ssh.key), *ssh.openssh_options(), "-o", "ConnectTimeout=10",
            "-o", "LogLevel=ERROR", f"{ssh.user}@{ssh.host}", command]
