"""Processes we started and track by pidfile: is it still ours, and stopping it by its pid."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path


def running_pid(pidfile: Path, marker: str, program: str = "") -> int | None:
    """The pid in ``pidfile`` when that process still runs with ``marker`` among its arguments
    (and, given ``program``, runs that program)."""
    try:
        pid = int(pidfile.read_text().strip())
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    # A pid reused by another program is not ours: the marker (our config path) must be there.
    if marker.encode() not in argv:
        return None
    if program and os.path.basename(argv[0].decode(errors="replace")) != program:
        return None
    return pid


def terminate(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL; reaps it when it is our child."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        while _alive(pid):
            time.sleep(0.05)
    # Exited: a zombie whose parent is gone is reaped by init a moment later; give it that moment
    # so a caller that looks at /proc right after sees the process gone.
    grace = time.monotonic() + 2.0
    while Path(f"/proc/{pid}").exists() and time.monotonic() < grace:
        time.sleep(0.02)


def _alive(pid: int) -> bool:
    # Our own child (started in this process) must be reaped, or it lingers as a zombie.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
