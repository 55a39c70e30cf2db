"""The VM lab's libvirt: Debian's ``libvirtd`` and ``virtlogd`` on their usual sockets, started by
``lab up --vm`` when nothing answers there (pidfiles and logs under ``<work_dir>/lab/libvirt``),
stopped by ``lab down`` after it destroyed and undefined the lab's domain and pool.

A stock libvirt autostarts its ``default`` network (virbr0, 192.168.122.1/24, dnsmasq) in this
host's namespace: the lab refuses to start a daemon while that network is marked autostart
(``scripts/setup.sh`` removes the mark), and never starts a network itself.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apex_tools.core.errors import LabError
from apex_tools.core.processes import running_pid
from apex_tools.lab.processes import start_detached, stop_pid

RUN_DIR = Path("/run/libvirt")
DEFAULT_AUTOSTART = Path("/etc/libvirt/qemu/networks/autostart/default.xml")
URI = "qemu:///system"


@dataclass(frozen=True)
class Daemon:
    """One daemon: its program, the socket it answers on, and its files under the lab folder."""

    program: str
    socket: Path
    root: Path

    @property
    def pid(self) -> Path:
        return self.root / f"{self.program}.pid"

    @property
    def log(self) -> Path:
        return self.root / f"{self.program}.log"

    def answers(self) -> bool:
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            sock.connect(str(self.socket))
            return True
        return False


def daemons(root: Path) -> list[Daemon]:
    """virtlogd first (qemu's output goes through it), then libvirtd."""
    return [Daemon("virtlogd", RUN_DIR / "virtlogd-sock", root), Daemon("libvirtd", RUN_DIR / "libvirt-sock", root)]


def ensure_daemons(root: Path) -> list[tuple[str, str, str]]:
    """Start what does not answer; (name, status, detail) for each daemon."""
    if DEFAULT_AUTOSTART.exists() or DEFAULT_AUTOSTART.is_symlink():
        raise LabError(f"libvirt would autostart its 'default' network (virbr0, 192.168.122.1) on this host: "
                       f"{DEFAULT_AUTOSTART} exists", f"remove it (rm {DEFAULT_AUTOSTART}; scripts/setup.sh does)")
    rows = []
    for daemon in daemons(root):
        if daemon.answers():
            pid = running_pid(daemon.pid, str(daemon.pid))
            rows.append((daemon.program, "running" if pid else "left alone",
                         f"pid {pid}" if pid else "something else answers there"))
            continue
        binary = shutil.which(daemon.program) or f"/usr/sbin/{daemon.program}"
        if not Path(binary).exists():
            raise LabError(f"the VM lab needs {daemon.program}, which is not installed",
                           "apt-get install libvirt-daemon-system qemu-system-x86")
        pid = start_detached([binary, "--pid-file", str(daemon.pid)], daemon.pid, daemon.log, daemon.answers,
                             f"{daemon.program} ({daemon.socket})")
        rows.append((daemon.program, "started", f"pid {pid}, log {daemon.log}"))
    refuse_default_network()
    return rows


def refuse_default_network() -> None:
    """Fail when libvirt's 'default' NAT network is active here (someone else's libvirtd started it)."""
    conn = connect()
    if conn is None:
        return
    try:
        network = _lookup(conn, "networkLookupByName", "default")
        if network is not None and network.isActive():
            raise LabError("libvirt's 'default' network (virbr0, 192.168.122.1/24) is active on this host",
                           "stop it (virsh net-destroy default; virsh net-autostart --disable default): the VM "
                           "lab uses user-mode networking and wants no bridge on this host")
    finally:
        conn.close()


def connect() -> Any:
    """A connection to the libvirtd on /run/libvirt; None when it does not answer."""
    if not Daemon("libvirtd", RUN_DIR / "libvirt-sock", RUN_DIR).answers():
        return None
    import libvirt

    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt.open(URI)


def domain_state(name: str, forward: int) -> tuple[str, str]:
    """(state, address) of the lab's undercloud domain: running, shut off, not defined, no libvirtd."""
    conn = connect()
    if conn is None:
        return "no libvirtd", ""
    try:
        dom = _lookup(conn, "lookupByName", name)
        if dom is None:
            return "not defined", ""
        return ("running" if dom.isActive() else "shut off"), (f"127.0.0.1:{forward}" if forward else "")
    finally:
        conn.close()


def _lookup(conn: Any, how: str, name: str) -> Any:
    import libvirt

    try:
        return getattr(conn, how)(name)
    except libvirt.libvirtError:
        return None


def _remove(thing: Any) -> None:
    """Stop (destroy) a domain or pool when it runs, then undefine it."""
    if thing.isActive():
        thing.destroy()
    thing.undefine()


def tear_down(name: str, pool_name: str, root: Path) -> list[tuple[str, str, str]]:
    """Destroy and undefine the lab's domain and storage pool, then stop the daemons the lab started
    (only when no other domain runs on them)."""
    rows = []
    busy = False
    conn = connect()
    if conn is not None:
        try:
            for what, how, label, done in ((f"domain {name}", "lookupByName", name, "destroyed and undefined"),
                                           (f"storage pool {pool_name}", "storagePoolLookupByName", pool_name,
                                            "undefined")):
                found = _lookup(conn, how, label)
                if found is not None:
                    _remove(found)
                rows.append((what, done if found is not None else "not defined", ""))
            busy = bool(conn.listAllDomains(1))  # VIR_CONNECT_LIST_DOMAINS_ACTIVE
        finally:
            conn.close()
    for daemon in reversed(daemons(root)):
        if busy:
            rows.append((daemon.program, "left running", "other domains run on it"))
            continue
        stopped = stop_pid(daemon.pid, str(daemon.pid), timeout=30)
        rows.append((daemon.program, "stopped" if stopped else "not running", ""))
    return rows


def daemon_pids(root: Path) -> dict[str, int | None]:
    """The pid of each daemon the lab started under ``root`` and that still runs (None: not running)."""
    return {d.program: running_pid(d.pid, str(d.pid)) for d in daemons(root)}
