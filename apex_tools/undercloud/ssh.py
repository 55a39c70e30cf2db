"""How this host reaches the undercloud over SSH: the connection, the wait, commands, forwards.

Paramiko rather than the ``ssh`` binary: the wait tells "not listening yet", "listening but
not SSH yet" and "refuses our key" apart (each a different hint), a command's exit status
and output come back without a shell in between, and a local forward lives in this process
(no child to clean up, bytes counted). Ansible itself keeps using OpenSSH for the playbooks.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
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
from apex_tools.core.state import atomic_write
from apex_tools.core.lazy import lazy_import

if TYPE_CHECKING:
    import paramiko
else:  # loaded on first use: a run that never opens SSH (push-registry, a local undercloud) skips it
    paramiko = lazy_import("paramiko")

LOG = logging.getLogger(__name__)

# One attempt's TCP/banner/auth timeout; the wait retries within its own deadline.
ATTEMPT_TIMEOUT = 10.0
REFUSED = "refuses connections (nothing listens yet)"


@dataclass(frozen=True)
class SSHTarget:
    """Host, port, user and private key of an SSH connection to the undercloud.

    ``known_hosts`` is the OpenSSH-format file the server's host key is checked against (None:
    the user's ``~/.ssh/known_hosts`` only); with ``pin`` an unknown host's key is recorded there
    on first contact (trust on first use), else an unknown key is refused.
    """

    host: str
    port: int
    user: str
    key: Path
    known_hosts: Path | None = None
    pin: bool = False

    def __str__(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    @property
    def host_key_name(self) -> str:
        """The host's name in a known_hosts file (OpenSSH's and paramiko's ``[host]:port`` rule)."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    def openssh_options(self) -> list[str]:
        """``-o`` options making OpenSSH check the host key as paramiko does (never ask, never add)."""
        files = str(self.known_hosts) if self.known_hosts else "~/.ssh/known_hosts"
        return ["-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={files}",
                "-o", "GlobalKnownHostsFile=/dev/null", "-o", "BatchMode=yes"]


class HostKeyUnknown(Exception):
    """The server's host key is in no known_hosts file and may not be recorded.

    Not a ``paramiko.SSHException`` (defining it would import paramiko with this module); both
    callers of ``connect`` catch it by name."""


def key_fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's form: ``ED25519 SHA256:<base64>`` (what ``ssh-keygen -lf`` prints)."""
    digest = base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")
    kind = key.get_name().removeprefix("ssh-").split("-")[0].upper()
    return f"{kind} SHA256:{digest}"


class _PinFirstKey:
    """Record an unknown host's key in the target's known_hosts (pin), or refuse it.

    A ``paramiko.MissingHostKeyPolicy`` by duck typing: paramiko only calls ``missing_host_key``,
    and subclassing would import paramiko with this module."""

    def __init__(self, target: SSHTarget) -> None:
        self.target = target

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        path = self.target.known_hosts
        if not self.target.pin or path is None:
            raise HostKeyUnknown(f"{hostname} offered host key {key_fingerprint(key)}, which "
                                 f"{path or '~/.ssh/known_hosts'} does not hold")
        have = path.read_text() if path.is_file() else ""
        line = f"{hostname} {key.get_name()} {key.get_base64()}\n"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, have + ("\n" if have and not have.endswith("\n") else "") + line, mode=0o600)
        LOG.warning("SSH %s: first contact, recorded its host key %s in %s", hostname, key_fingerprint(key), path)


def forget_host_key(known_hosts: Path, host: str | None = None, port: int = 22) -> bool:
    """Drop the recorded key of ``host:port`` (every key when ``host`` is None); True when one was dropped.

    For a rebuilt undercloud (``undercloud --recreate``): its next contact is a first contact again.
    """
    if not known_hosts.is_file():
        return False
    if host is None:
        known_hosts.unlink()
        return True
    name = SSHTarget(host, port, "", Path()).host_key_name
    lines = known_hosts.read_text().splitlines(keepends=True)
    kept = [line for line in lines if name not in _recorded_names_of(line)]
    if len(kept) == len(lines):
        return False
    atomic_write(known_hosts, "".join(kept), mode=0o600)
    return True


def _recorded_names_of(line: str) -> list[str]:
    """The host names of one known_hosts line (plain entries; a hashed one matches nothing)."""
    return line.split()[0].split(",") if line.split() else []


def _recorded_names(known_hosts: Path) -> set[str]:
    """The host names of a known_hosts file's plain entries."""
    lines = known_hosts.read_text().splitlines() if known_hosts.is_file() else []
    return {name for line in lines for name in _recorded_names_of(line)}


def pin_host_key(target: SSHTarget) -> None:
    """Make the first contact (which records the host key) unless the key is already recorded,
    so OpenSSH, which never records one, finds it (ansible's first playbook, ``ssh`` streams)."""
    if target.pin and target.known_hosts is not None \
            and target.host_key_name not in _recorded_names(target.known_hosts):
        Session(target).close()


def _host_key_error(target: SSHTarget, exc: paramiko.SSHException) -> UndercloudError:
    """A changed or unknown host key, with both fingerprints and what to do."""
    where = target.known_hosts or "~/.ssh/known_hosts"
    if isinstance(exc, paramiko.BadHostKeyException):
        return UndercloudError(
            f"SSH {target}: the host key changed: {where} holds {key_fingerprint(exc.expected_key)} for "
            f"{target.host_key_name}, the server offered {key_fingerprint(exc.key)} (someone may be "
            "intercepting the connection, or the undercloud was rebuilt)",
            "if the undercloud was rebuilt on purpose, run `apex undercloud --recreate` (forgets the recorded key) "
            f"or `ssh-keygen -R '{target.host_key_name}' -f {where}`; otherwise do not connect and find out why")
    return UndercloudError(f"SSH {target}: unknown host key: {exc}",
                           f"add the undercloud's key to {where} (ssh-keyscan -p {target.port} {target.host}, "
                           "checked against the undercloud's own), or clear undercloud.known_hosts to trust it "
                           "on first use")


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
    # The host key is checked against the target's file (recorded there on first contact when
    # pinning): whoever else answers on the undercloud's address gets no password nor key.
    if target.known_hosts is not None and target.known_hosts.is_file():
        client.load_host_keys(str(target.known_hosts))
    elif target.known_hosts is None:
        client.load_system_host_keys()
    client.set_missing_host_key_policy(_PinFirstKey(target))
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
            return REFUSED
        return "; ".join(sorted({_why(c) for c in causes})) or str(exc)
    if isinstance(exc, paramiko.AuthenticationException):
        return "refuses the key"
    if isinstance(exc, ConnectionRefusedError):
        return REFUSED
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
    refused_timeout: float | None = None,
) -> None:
    """Wait until ``ssh target true`` succeeds; after ``timeout`` seconds raise naming the last cause.

    A refused key is final (waiting does not fix it); everything else is retried.
    ``on_wait(reason, elapsed)`` is told about each failed attempt (progress).
    ``refused_timeout``: give up once connections have been refused for that long (a host that
    already exists and refuses is an answer, not a boot in progress).
    """
    load_key(target.key)  # a missing key is not worth waiting for
    started = time.monotonic()
    deadline = started + timeout
    last = "no attempt made"
    refused_since: float | None = None
    while True:
        left = deadline - time.monotonic()
        try:
            client = connect(target, timeout=max(0.5, min(ATTEMPT_TIMEOUT, left)))
        except (paramiko.BadHostKeyException, HostKeyUnknown) as exc:
            raise _host_key_error(target, exc) from None  # final: waiting does not change a key
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
        refused_since = (refused_since or time.monotonic()) if last == REFUSED else None
        if refused_timeout is not None and refused_since is not None and \
                time.monotonic() - refused_since + interval > refused_timeout:
            raise UndercloudError(
                f"SSH {target}: {target.host} refuses connections on port {target.port} "
                f"(for {time.monotonic() - refused_since:.0f} s)",
                f"check that sshd runs on {target.host} and listens on port {target.port} (undercloud.host, "
                "undercloud.port) and that no firewall rejects it")
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
        except (paramiko.BadHostKeyException, HostKeyUnknown) as exc:
            raise _host_key_error(target, exc) from None
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
