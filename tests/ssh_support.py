"""A real SSH server on loopback for the tests: Debian's sshd with its own host key, config and keys.

``run_sshd(root)`` is a context manager (and ``sshd`` in tests/conftest.py-style fixtures below)
that starts ``/usr/sbin/sshd -D`` on 127.0.0.1 and a free port, authorizes a freshly generated
client key for one user (root by default, the user running the tests), and stops the server
by its pid when the block ends, even on failure. ``bin_dir`` is put first on the PATH of every
session (``SetEnv``): the place for stand-ins of commands the host does not have.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import free_port, need, stop_process

SSHD = "/usr/sbin/sshd"
PRIVSEP_DIR = Path("/run/sshd")  # compiled into Debian's sshd; it refuses to start without it
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class SSHServer:
    """A running test sshd: where it listens, who may log in with which key, its files."""

    host: str
    port: int
    user: str
    key: Path
    bin_dir: Path
    root: Path
    pid: int = 0
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list, repr=False)

    @property
    def log(self) -> Path:
        return self.root / "sshd.log"

    def start(self) -> None:
        """Start the prepared server and wait until it sends its banner."""
        self.procs.append(start_sshd(self))

    def new_host_key(self) -> None:
        """Stop the server, give it a new host key, start it again on the same port (a rebuilt
        undercloud, or someone else answering on its address)."""
        for proc in self.procs:
            stop_process(proc)
        self.procs.clear()
        for old in (self.root / "host_ed25519", self.root / "host_ed25519.pub"):
            old.unlink()
        keygen(self.root / "host_ed25519")
        self.start()


def keygen(path: Path, kind: str = "ed25519") -> Path:
    """A new passphrase-less key pair at ``path`` (and ``path.pub``)."""
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "apex-tools-test", "-f", str(path)],
                   check=True, stdin=subprocess.DEVNULL)
    return path


def wait_listening(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5) as sock:
            if sock.recv(4).startswith(b"SSH-"):
                return
        time.sleep(0.05)
    raise RuntimeError(f"sshd on {host}:{port} did not start within {timeout}s")


def sshd_config(root: Path, port: int, user: str, bin_dir: Path) -> str:
    return "\n".join([
        "ListenAddress 127.0.0.1",
        f"Port {port}",
        f"HostKey {root / 'host_ed25519'}",
        f"PidFile {root / 'sshd.pid'}",
        f"AuthorizedKeysFile {root / 'authorized_keys'}",
        f"AllowUsers {user}",
        "PermitRootLogin prohibit-password",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PubkeyAuthentication yes",
        "UsePAM no",
        # The test's files live under /tmp, whose permissions StrictModes would refuse.
        "StrictModes no",
        "AllowTcpForwarding yes",
        "Subsystem sftp internal-sftp",
        "PermitOpen 127.0.0.1:*",
        f"SetEnv PATH={bin_dir}:{DEFAULT_PATH}",
        "MaxStartups 50:30:100",
        "LogLevel VERBOSE",
        "",
    ])


@contextlib.contextmanager
def run_sshd(root: Path, user: str | None = None, *, start: bool = True, port: int | None = None) -> Iterator[SSHServer]:
    """Start a test sshd under ``root`` (keys, config, log); yields its ``SSHServer``; stops it after.

    ``start=False`` prepares everything (port, keys, config) without starting it, so a test can
    start it later with ``server.start()`` (the SSH wait "before it listens").
    """
    need(Path(SSHD).exists() and shutil.which("ssh-keygen") is not None, "openssh-server (/usr/sbin/sshd)")
    user = user or pwd.getpwuid(os.getuid()).pw_name
    root.mkdir(parents=True, exist_ok=True)
    bin_dir = root / "bin"
    bin_dir.mkdir(exist_ok=True)
    keygen(root / "host_ed25519")
    client_key = keygen(root / "client_ed25519")
    (root / "authorized_keys").write_text(Path(f"{client_key}.pub").read_text())
    port = port or free_port()
    (root / "sshd_config").write_text(sshd_config(root, port, user, bin_dir))
    server = SSHServer("127.0.0.1", port, user, client_key, bin_dir, root)
    try:
        if start:
            server.start()
        yield server
    finally:
        for proc in server.procs:
            stop_process(proc)


def start_sshd(server: SSHServer) -> subprocess.Popen[bytes]:
    """Start the prepared server and wait until it sends its banner."""
    PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    subprocess.run([SSHD, "-t", "-f", str(server.root / "sshd_config")], check=True)
    with open(server.log, "ab") as log:
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(server.root / "sshd_config")],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    server.pid = proc.pid
    try:
        wait_listening(server.host, server.port)
    except BaseException:
        stop_process(proc)
        raise
    return proc


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[SSHServer]:
    """A running loopback sshd letting the current user in with ``sshd.key``."""
    with run_sshd(tmp_path / "sshd") as server:
        yield server
