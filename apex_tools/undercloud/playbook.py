"""Run one of our playbooks against the undercloud with ``ansible-playbook``.

The inventory names a single host, ``undercloud``: a local connection when the driver has no
SSH target, else SSH with the driver's host, port, user and key. The whole output goes to a log
file; a failure raises ``PlaybookError`` naming the task, the host and the tail of its output.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apex_tools.core.resources import data_path
from apex_tools.core.state import atomic_write
from apex_tools.core.errors import UndercloudError
from apex_tools.undercloud.ssh import SSHTarget, pin_host_key

HOST = "undercloud"
TAIL = 15

_TASK = re.compile(r"^TASK \[(?P<name>.*)\] \**$")
_FATAL = re.compile(r"^fatal: \[(?P<host>[^\]]+)\]: (?P<what>FAILED|UNREACHABLE)! => (?P<body>.*)$")


class PlaybookError(UndercloudError):
    """A playbook failed on the undercloud."""


@dataclass(frozen=True)
class Failure:
    """The first failed task of a run, as ansible reported it."""

    task: str
    host: str
    kind: str
    output: list[str]


def playbook_path(name: str) -> Path:
    """A bundled playbook by file name (``ansible/playbooks/<name>``)."""
    return data_path("ansible", "playbooks", name)


def inventory(ssh: SSHTarget | None) -> dict[str, Any]:
    """The one-host inventory (YAML/JSON form) for a driver's connection."""
    if ssh is None:
        # The system's python runs the modules (it has what they import); ours is the fallback.
        python = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
        host = {"ansible_connection": "local", "ansible_python_interpreter": python}
    else:
        host = {
            "ansible_host": ssh.host,
            "ansible_port": ssh.port,
            "ansible_user": ssh.user,
            "ansible_ssh_private_key_file": str(ssh.key),
            # The host key pinned by the driver's first contact (paramiko), checked again by OpenSSH.
            "ansible_ssh_common_args": shlex.join([*ssh.openssh_options(), "-o", "LogLevel=ERROR"]),
        }
    return {"all": {"hosts": {HOST: host}}}


def final_failure(output: str) -> Failure | None:
    """The last ``fatal:`` line of a default-callback output, with its task and message lines.

    The last, not the first: a failure inside a block that its ``rescue`` recovered is not what
    stopped the run (configure_undercloud.yaml retries the install that way).
    """
    task = "(before any task)"
    found = None
    for line in output.splitlines():
        if m := _TASK.match(line.strip()):
            task = m["name"]
        elif m := _FATAL.match(line.strip()):
            found = Failure(task, m["host"], m["what"].lower(), _message_lines(m["body"]))
    return found


def _message_lines(body: str) -> list[str]:
    """The useful lines of a failed task's result: msg, stderr, stdout (last lines first kept)."""
    try:
        result = json.loads(body)
    except json.JSONDecodeError:
        return [body]
    lines: list[str] = []
    for key in ("msg", "stderr", "stdout"):
        value = result.get(key) if isinstance(result, dict) else None
        if value:
            lines += str(value).splitlines()
    return lines[-TAIL:] or [body]


def _end_masters(folder: Path) -> None:
    """Ask each SSH master connection (ControlPersist) under ``folder`` to exit."""
    for socket_path in sorted(folder.glob("*")) if folder.is_dir() else []:
        subprocess.run(["ssh", "-o", f"ControlPath={socket_path}", "-O", "exit", HOST], stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=10, check=False)


def run_playbook(
    playbook: Path,
    ssh: SSHTarget | None,
    extra_vars: Mapping[str, Any],
    log_path: Path,
    *,
    timeout: float | None = None,
) -> str:
    """Run ``playbook`` on the undercloud; return its output, or raise ``PlaybookError``."""
    if shutil.which("ansible-playbook") is None:
        raise PlaybookError("ansible-playbook is not installed", "apt-get install ansible-core")
    if ssh is not None:
        pin_host_key(ssh)  # OpenSSH only checks: the first contact (paramiko) records the key
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_STDOUT_CALLBACK": "default",
           "ANSIBLE_RETRY_FILES_ENABLED": "0", "ANSIBLE_HOST_KEY_CHECKING": "1", "PYTHONUNBUFFERED": "1",
           # Modules go through the SSH session's stdin, not a file copied over first: one
           # connection a task instead of three (the undercloud's sudoers has no requiretty).
           "ANSIBLE_PIPELINING": "1"}
    with tempfile.TemporaryDirectory(prefix="apex-ansible-") as tmp:
        # The run's own SSH master connections (tasks share one), ended with it: a master kept
        # from an earlier run would carry a later one past the host key check, and outlive us.
        env["ANSIBLE_SSH_CONTROL_PATH_DIR"] = str(Path(tmp) / "cp")
        inv = Path(tmp) / "inventory.json"
        inv.write_text(json.dumps(inventory(ssh)))
        evars = Path(tmp) / "vars.json"
        evars.write_text(json.dumps(dict(extra_vars), default=str))
        cmd = ["ansible-playbook", "-i", str(inv), "-e", f"@{evars}", str(playbook)]
        try:
            # Its own /dev/null: ansible refuses a non-blocking stdin.
            done = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout if isinstance(exc.stdout, str) else (exc.stdout or b"").decode(errors="replace")
            atomic_write(log_path, out.encode())
            raise PlaybookError(f"playbook {playbook.name} did not finish within {timeout:.0f} s",
                                f"read {log_path}") from None
        finally:
            _end_masters(Path(tmp) / "cp")
    atomic_write(log_path, done.stdout.encode())
    if done.returncode == 0:
        return done.stdout
    failure = final_failure(done.stdout)
    if failure is None:
        tail = "\n  ".join(done.stdout.strip().splitlines()[-TAIL:])
        raise PlaybookError(f"playbook {playbook.name} failed (exit {done.returncode}):\n  {tail}",
                            f"the whole output is in {log_path}")
    body = "\n  ".join(failure.output)
    raise PlaybookError(
        f"playbook {playbook.name}: task {failure.task!r} {failure.kind} on {failure.host}:\n  {body}",
        f"the whole output is in {log_path}",
    )
