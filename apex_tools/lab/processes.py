"""Detached servers with pidfiles: start one, stop it by its pid (``core.processes`` tells ours)."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from apex_tools.core.errors import LabError
from apex_tools.core.processes import running_pid, terminate
from apex_tools.core.state import atomic_write


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
    if pid is not None:
        terminate(pid, timeout)
    with contextlib.suppress(FileNotFoundError):
        pidfile.unlink()
    return pid is not None
