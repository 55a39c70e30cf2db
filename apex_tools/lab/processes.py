"""Detached servers with pidfiles: start one, tell whether it still runs, stop it by its pid."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from apex_tools.core.errors import LabError
from apex_tools.core.state import atomic_write


def running_pid(pidfile: Path, marker: str) -> int | None:
    """The pid in ``pidfile`` when that process still runs with ``marker`` in its command line."""
    try:
        pid = int(pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    # A pid reused by another program is not ours: the marker (our config path) must be there.
    return pid if marker.encode() in cmdline.split(b"\0") else None


def start_detached(argv: Sequence[str], pidfile: Path, logfile: Path, ready: Callable[[], bool],
                   what: str, timeout: float = 30.0) -> int:
    """Start ``argv`` in its own session (it outlives us), write its pid, wait until ``ready()``."""
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with open(logfile, "ab") as log:
        proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True)
    atomic_write(pidfile, f"{proc.pid}\n")
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)
            with contextlib.suppress(FileNotFoundError):
                pidfile.unlink()
            tail = logfile.read_text(errors="replace").splitlines()[-10:]
            raise LabError(f"the lab's {what} did not start (exit {proc.returncode}):\n  " + "\n  ".join(tail),
                           f"see {logfile}; is its port taken by something else?")
        time.sleep(0.05)
    return proc.pid


def stop_pid(pidfile: Path, marker: str, timeout: float = 10.0) -> bool:
    """Stop the process ``pidfile`` names when it is still ours; True when one was stopped."""
    pid = running_pid(pidfile, marker)
    if pid is None:
        with contextlib.suppress(FileNotFoundError):
            pidfile.unlink()
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
        while _alive(pid):
            time.sleep(0.05)
    with contextlib.suppress(FileNotFoundError):
        pidfile.unlink()
    return True


def _alive(pid: int) -> bool:
    # Our own child (started in this process) must be reaped, or it lingers as a zombie.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
