"""How this host reaches the undercloud over SSH: the connection, the wait, commands, forwards.

Paramiko rather than the ``ssh`` binary: the wait tells "not listening yet", "listening but
not SSH yet" and "refuses our key" apart (each a different hint), a command's exit status
and output come back without a shell in between, and a local forward lives in this process
(no child to clean up, bytes counted). Ansible itself keeps using OpenSSH for the playbooks.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from apex_tools.core.errors import UndercloudError
from apex_tools.core.lazy import lazy_import

if TYPE_CHECKING:
    import paramiko
else:  # loaded on first use: a run that never opens SSH (push-registry, a local undercloud) skips it
    paramiko = lazy_import("paramiko")

LOG = logging.getLogger(__name__)

# One attempt's TCP/banner/auth timeout; the wait retries within its own deadline.
ATTEMPT_TIMEOUT = 10.0


@dataclass(frozen=True)
class SSHTarget:
    """Host, port, user and private key of an SSH connection to the undercloud."""

    host: str
    port: int
    user: str
    key: Path

    def __str__(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


@dataclass(frozen=True)
class CommandResult:
    """A command's exit status and output, as run on the undercloud."""

    command: str
    status: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.status == 0


def load_key(path: Path) -> paramiko.PKey:
    """The private key at ``path``; a missing or unreadable one is an error naming it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UndercloudError(f"SSH key {path} does not exist",
                              "set undercloud.ssh_key to the private key the undercloud accepts")
    for kind in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return kind.from_private_key_file(str(path))
        except paramiko.PasswordRequiredException:
            raise UndercloudError(f"SSH key {path} is protected by a passphrase",
                                  "use a key without a passphrase (the run is unattended)") from None
        except (paramiko.SSHException, ValueError):
            continue
    raise UndercloudError(f"SSH key {path} is not a private key paramiko can read",
                          "give an OpenSSH ed25519, ECDSA or RSA private key")


def connect(target: SSHTarget, timeout: float = ATTEMPT_TIMEOUT) -> paramiko.SSHClient:
    """One connection attempt; raises paramiko/socket errors (``wait_for_ssh`` translates them)."""
    client = paramiko.SSHClient()
    # The undercloud's host key changes when it is rebuilt; it is reached on our own network.
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    try:
        client.connect(target.host, port=target.port, username=target.user, pkey=load_key(target.key),
                       timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
                       allow_agent=False, look_for_keys=False)
    except BaseException:
        client.close()
        raise
    return client


def _why(exc: BaseException) -> str:
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        # One error per address tried; refused everywhere means nothing listens yet.
        causes = list(exc.errors.values())
        if causes and all(isinstance(c, ConnectionRefusedError) for c in causes):
            return "refuses connections (nothing listens yet)"
        return "; ".join(sorted({_why(c) for c in causes})) or str(exc)
    if isinstance(exc, paramiko.AuthenticationException):
        return "refuses the key"
    if isinstance(exc, ConnectionRefusedError):
        return "refuses connections (nothing listens yet)"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "does not answer"
    if isinstance(exc, paramiko.SSHException):
        return f"does not speak SSH yet ({exc})"
    return str(exc) or type(exc).__name__


def wait_for_ssh(
    target: SSHTarget,
    timeout: float,
    interval: float = 1.0,
    on_wait: Callable[[str, float], None] | None = None,
) -> None:
    """Wait until ``ssh target true`` succeeds; after ``timeout`` seconds raise naming the last cause.

    A refused key is final (waiting does not fix it); everything else is retried.
    ``on_wait(reason, elapsed)`` is told about each failed attempt (progress).
    """
    load_key(target.key)  # a missing key is not worth waiting for
    started = time.monotonic()
    deadline = started + timeout
    last = "no attempt made"
    while True:
        left = deadline - time.monotonic()
        try:
            client = connect(target, timeout=max(0.5, min(ATTEMPT_TIMEOUT, left)))
        except paramiko.AuthenticationException:
            raise UndercloudError(f"SSH {target}: the server refuses key {target.key}",
                                  f"put the public key of {target.key} in {target.user}'s authorized_keys") from None
        except (OSError, paramiko.SSHException, EOFError) as exc:
            last = _why(exc)
        else:
            try:
                result = _exec(client, "true", max(1.0, left))
                if result.ok:
                    return
                last = f"`true` exited {result.status}"
            except (OSError, paramiko.SSHException, EOFError) as exc:
                last = _why(exc)
            finally:
                client.close()
        elapsed = time.monotonic() - started
        LOG.debug("SSH %s: %s (%.0f s)", target, last, elapsed)
        if on_wait:
            on_wait(last, elapsed)
        if time.monotonic() + interval > deadline:
            raise UndercloudError(
                f"SSH {target}: not reachable within {timeout:.0f} s (last: {last})",
                "check the undercloud is up and the host/port/user settings (undercloud.host, "
                "undercloud.port, undercloud.user); raise undercloud.wait_timeout for a slow boot",
            )
        time.sleep(interval)


def _exec(client: paramiko.SSHClient, command: str, timeout: float) -> CommandResult:
    _, out, err = client.exec_command(command, timeout=timeout)
    stdout = out.read().decode(errors="replace")
    stderr = err.read().decode(errors="replace")
    return CommandResult(command, out.channel.recv_exit_status(), stdout, stderr)


class Session:
    """An open SSH connection to the undercloud that runs commands and forwards ports."""

    def __init__(self, target: SSHTarget) -> None:
        self.target = target
        try:
            self.client = connect(target)
        except paramiko.AuthenticationException:
            raise UndercloudError(f"SSH {target}: the server refuses key {target.key}",
                                  f"put the public key of {target.key} in {target.user}'s authorized_keys") from None
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise UndercloudError(f"SSH {target}: cannot connect: {_why(exc)}",
                                  "check the undercloud is up and undercloud.host/port/user") from None

    def run(self, command: str, timeout: float = 120.0) -> CommandResult:
        """Run ``command`` through the login user's shell; its status and output."""
        try:
            return _exec(self.client, command, timeout)
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise UndercloudError(f"SSH {self.target}: `{command}` failed: {_why(exc)}",
                                  "check the connection to the undercloud") from None

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Forward:
    """A local forward: ``127.0.0.1:local_port`` here → ``remote`` as the undercloud sees it."""

    local_port: int
    remote_host: str
    remote_port: int
    connections: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.local_port}"


def _pump(local: socket.socket, channel: paramiko.Channel, forward: Forward) -> None:
    """Copy bytes both ways until either side closes."""
    try:
        # Each direction: where bytes come from, where they go, which counter they add to.
        directions = ((local, channel, "bytes_up"), (channel, local, "bytes_down"))
        while True:
            ready, _, _ = select.select([local, channel], [], [], 1.0)
            for source, sink, counter in directions:
                if source in ready:
                    data = source.recv(65536)
                    if not data:
                        return  # the finally below closes both ends
                    sink.sendall(data)
                    with forward._lock:
                        setattr(forward, counter, getattr(forward, counter) + len(data))
    except (OSError, paramiko.SSHException, EOFError) as exc:
        LOG.debug("forward to %s:%d: %s", forward.remote_host, forward.remote_port, exc)
    finally:
        channel.close()
        local.close()


@contextlib.contextmanager
def local_forward(target: SSHTarget, remote_host: str, remote_port: int) -> Iterator[Forward]:
    """Forward a free port on 127.0.0.1 to ``remote_host:remote_port`` through ``target`` for the block.

    Binds loopback only (nothing else on the network can use the tunnel); every connection and
    the SSH session are closed when the block ends, even on error.
    """
    session = Session(target)
    transport = session.client.get_transport()
    assert transport is not None
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.5)
    forward = Forward(listener.getsockname()[1], remote_host, remote_port)
    stop = threading.Event()
    pumps: list[threading.Thread] = []

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, peer = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                channel = transport.open_channel("direct-tcpip", (remote_host, remote_port), peer)
            except (paramiko.SSHException, OSError, EOFError) as exc:
                LOG.debug("forward: the undercloud cannot open %s:%d: %s", remote_host, remote_port, exc)
                conn.close()
                continue
            with forward._lock:
                forward.connections += 1
            pump = threading.Thread(target=_pump, args=(conn, channel, forward), daemon=True)
            pump.start()
            pumps.append(pump)

    acceptor = threading.Thread(target=accept, name=f"forward-{forward.local_port}", daemon=True)
    acceptor.start()
    LOG.debug("forward 127.0.0.1:%d → %s:%d via %s", forward.local_port, remote_host, remote_port, target)
    try:
        yield forward
    finally:
        stop.set()
        acceptor.join(timeout=5)
        listener.close()
        session.close()  # closes the channels; the pumps end on their next read
        for pump in pumps:
            pump.join(timeout=5)
