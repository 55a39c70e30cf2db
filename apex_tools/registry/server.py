"""The local registry: start Debian's ``docker-registry`` when the address is ours and silent.

The registry must outlive the target (later targets and the overcloud pull from it), so it
runs detached, in its own session, with its pid in ``<work_dir>/registry/registry.pid``.
``stop_local_registry(work_dir)`` stops the one we started (checking the pid is still that
program), and a registry already answering is never touched.

Inside the tool's image (``APEX_TOOL_IMAGE=1``, set by the Containerfile) a detached process
would still die with the container, so the registry runs in a container of the same image
beside it, through the host's engine (the docker socket), with its host pid in the pidfile.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import re
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any


from apex_tools.core.errors import RegistryError
from apex_tools.core.processes import running_pid, terminate
from apex_tools.core.resources import data_path
from apex_tools.core.state import atomic_write, write_if_changed
from apex_tools.registry.auth import Credentials
from apex_tools.registry.client import RegistryClient

log = logging.getLogger(__name__)

BINARY = "docker-registry"
START_TIMEOUT = 30.0
# Set by the Containerfile: apex runs in its own image, whose container ends with the run.
IN_IMAGE_ENV = "APEX_TOOL_IMAGE"
# The config's auth section when registry.username/password are set (``render_config``).
AUTH_BLOCK = Template("""\
# registry.username/password: every request needs them (bcrypt hashes, made by apex).
auth:
  htpasswd:
    realm: apex-tools-registry
    path: ${htpasswd}
""")
# Marks a registry container with the config it serves (one per work dir).
CONTAINER_LABEL = "org.opnfv.apex.registry-config"


@dataclass(frozen=True)
class LocalRegistry:
    """The local registry's address, and whether this call started it (with its pid)."""

    address: str
    started: bool
    pid: int | None = None


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` → (host, port)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise RegistryError(f"registry address {address!r} is not host:port", "set registry.address, e.g. 192.0.2.1:8787")
    return host.strip("[]"), int(port)


def is_local_address(host: str) -> bool:
    """True when ``host`` is loopback or an address of one of this machine's interfaces."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        try:
            ip = ipaddress.ip_address(socket.getaddrinfo(host, None)[0][4][0])
        except (OSError, IndexError, ValueError):
            return False
    if ip.is_loopback:
        return True
    # Binding succeeds only for an address this machine holds; nothing is sent anywhere.
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((str(ip), 0))
        except OSError:
            return False
    return True


def paths(work_dir: Path) -> dict[str, Path]:
    """Where the local registry keeps its configuration, data, log and pid."""
    root = Path(work_dir) / "registry"
    return {"root": root, "config": root / "config.yml", "storage": root / "data", "log": root / "registry.log",
            "pid": root / "registry.pid", "secret": root / "http.secret", "htpasswd": root / "htpasswd"}


def render_config(address: str, storage: Path, secret: str = "", htpasswd: Path | None = None) -> str:
    """``registry/config.yml`` filled for ``address``, ``storage``, the ``http.secret`` and the
    htpasswd file (None: no auth). A ``string.Template``: Jinja's import and compile would be most
    of a fresh registry's start."""
    template = Template(data_path("registry", "config.yml").read_text())
    auth = AUTH_BLOCK.substitute(htpasswd=htpasswd) if htpasswd else ""
    return template.substitute(address=address, storage=str(storage), secret=secret or secrets.token_hex(32),
                               auth=auth)


def http_secret(work_dir: Path) -> str:
    """The work dir's registry ``http.secret``: random, made once, kept 0600."""
    path = paths(work_dir)["secret"]
    with contextlib.suppress(FileNotFoundError):
        if value := path.read_text().strip():
            path.chmod(0o600)
            return value
    value = secrets.token_hex(32)
    atomic_write(path, value + "\n", mode=0o600)
    return value


def write_htpasswd(path: Path, credentials: Credentials) -> bool:
    """``user:bcrypt`` for the registry's htpasswd auth (0600); kept when it already matches; True when written."""
    import bcrypt

    user = credentials.username
    if ":" in user or "\n" in user:
        raise RegistryError("registry.username may not hold ':' or a line break", "pick another user name")
    with contextlib.suppress(FileNotFoundError, ValueError):
        name, _, hashed = path.read_text().strip().partition(":")
        # A fresh salt makes every hash differ: a file that still verifies is left as it is.
        if name == user and bcrypt.checkpw(credentials.password.encode(), hashed.encode()):
            path.chmod(0o600)
            return False
    hashed = bcrypt.hashpw(credentials.password.encode(), bcrypt.gensalt(rounds=10)).decode()
    atomic_write(path, f"{user}:{hashed}\n", mode=0o600)
    return True


def plan_local_registry(address: str, client: RegistryClient, start: bool) -> str | None:
    """The action needed for the local registry to answer (None when it already does)."""
    if client.ping():
        return None
    host, _ = split_address(address)
    if start and is_local_address(host):
        return f"start the local registry on {address} ({BINARY})"
    return f"registry {address} must answer (it is not this machine's to start)"


def ensure_local_registry(address: str, work_dir: Path, client: RegistryClient, start: bool = True) -> LocalRegistry:
    """Leave an answering registry alone; start ours when the address is this machine's."""
    if client.ping():
        return LocalRegistry(address, started=False, pid=_running_pid(work_dir))
    host, _ = split_address(address)
    if not (start and is_local_address(host)):
        raise RegistryError(
            f"registry {address} does not answer at {client.base}/v2/",
            "start it (it is not on this machine)" if start else "start it, or set registry.start to let apex do so",
        )
    running = _running_pid(work_dir)
    if running is not None:
        # Starting a second one would orphan the first (one pidfile per work dir).
        raise RegistryError(
            f"the registry this work dir started (pid {running}) runs but does not answer at {client.base}/v2/",
            f"stop it (kill {running}) or set registry.address to the address it serves",
        )
    binary = shutil.which(BINARY)
    if binary is None:
        raise RegistryError(f"cannot start the local registry on {address}: {BINARY} not found",
                            "apt-get install docker-registry")
    where = paths(work_dir)
    where["storage"].mkdir(parents=True, exist_ok=True)
    auth = None
    if client.credentials is not None:
        write_htpasswd(where["htpasswd"], client.credentials)
        auth = where["htpasswd"]
    config = render_config(address, where["storage"], http_secret(work_dir), auth)
    write_if_changed(where["config"], config, mode=0o600)
    where["config"].chmod(0o600)  # it holds the secret, even when an older run wrote it 0644
    own = own_container()
    if own is not None and _engine_answers():
        proc: subprocess.Popen[bytes] | _Beside = _Beside(own, binary, where, address)
    else:
        if os.environ.get(IN_IMAGE_ENV) == "1":
            # No socket mounted (the native builder needs none): fine for a run that ends with
            # its registry, as `docker run apex-tools deploy --lab` does.
            log.warning("in the tool's image with no Docker engine to start it beside (or no container apex can "
                        "name): the local registry runs in this container and stops with it")
        with open(where["log"], "ab") as logfile:
            proc = subprocess.Popen(
                [binary, "serve", str(where["config"])], stdin=subprocess.DEVNULL, stdout=logfile,
                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
            )
    write_if_changed(where["pid"], f"{proc.pid}\n")
    deadline = time.monotonic() + START_TIMEOUT
    # It usually answers within a few tens of milliseconds: poll often at first, then back off.
    pause = 0.005
    while not client.ping():
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)
            with contextlib.suppress(FileNotFoundError):
                where["pid"].unlink()
            tail = where["log"].read_text(errors="replace").splitlines()[-15:]
            raise RegistryError(
                f"the local registry on {address} did not start (exit {proc.returncode}):\n  " + "\n  ".join(tail),
                f"see {where['log']}; is the address taken, or not this machine's?",
            )
        time.sleep(pause)
        pause = min(pause * 1.5, 0.1)
    log.info("started the local registry on %s (pid %d, storage %s)", address, proc.pid, where["storage"])
    return LocalRegistry(address, started=True, pid=proc.pid)


def own_container() -> str | None:
    """This container's id when apex runs in the tool's image (read from the engine's bind mounts)."""
    if os.environ.get(IN_IMAGE_ENV) != "1":
        return None
    try:
        mounts = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return None
    found = re.search(r"/containers/([0-9a-f]{64})/(?:hostname|hosts|resolv\.conf) ", mounts)
    return found.group(1) if found else None


def _engine_answers() -> bool:
    """True when a Docker engine answers (DOCKER_HOST or the default socket)."""
    import docker

    try:
        docker.from_env(timeout=5).ping()
    except docker.errors.DockerException:
        return False
    return True


class _Beside:
    """The registry in a container of this one's image, so it outlives the run (Popen's few calls)."""

    def __init__(self, own: str, binary: str, where: dict[str, Path], address: str) -> None:
        import docker

        self._missing = docker.errors.NotFound
        try:
            self.client = docker.from_env()
            image = self.client.containers.get(own).attrs["Image"]
            root = str(where["root"])
            where["log"].touch()
            self.container = self.client.containers.run(
                image, ["-c", 'exec "$0" serve "$1" >>"$2" 2>&1', binary, str(where["config"]), str(where["log"])],
                entrypoint=["sh"], detach=True, auto_remove=True, network_mode="host",
                name=f"apex-registry-{split_address(address)[1]}", labels={CONTAINER_LABEL: str(where["config"])},
                volumes={root: {"bind": root, "mode": "rw"}},
            )
            self.container.reload()
        except docker.errors.DockerException as exc:
            raise RegistryError(
                f"cannot start the local registry on {address} beside this container: {exc}",
                "mount the docker socket (-v /var/run/docker.sock:/var/run/docker.sock), or start the registry "
                "yourself and set registry.address to it",
            ) from None
        self.pid: int = self.container.attrs["State"]["Pid"]
        self.returncode: int | None = None

    def poll(self) -> int | None:
        try:
            self.container.reload()
            state: dict[str, Any] = self.container.attrs["State"]
        except self._missing:
            state = {"Status": "exited", "ExitCode": -1}
        if state["Status"] in ("exited", "dead"):
            self.returncode = state["ExitCode"]
        return self.returncode

    def terminate(self) -> None:
        with contextlib.suppress(Exception):
            self.container.stop(timeout=10)

    def wait(self, timeout: float | None = None) -> int | None:
        return self.poll()


def _stop_beside(work_dir: Path) -> bool:
    """Stop the registry container of this work dir from inside the tool's image; True when one ran."""
    import docker

    config = str(paths(work_dir)["config"])
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException:
        return False  # no engine here: nothing can have been started beside this container
    try:
        found = client.containers.list(filters={"label": f"{CONTAINER_LABEL}={config}"})
        for container in found:
            container.stop(timeout=10)
    except docker.errors.DockerException as exc:
        raise RegistryError(f"cannot stop the local registry container of {work_dir}: {exc}",
                            "mount the docker socket, or stop it on the host (docker ps)") from None
    return bool(found)


def local_registry_pid(work_dir: Path) -> int | None:
    """The pid of the registry ``work_dir`` started, when it still runs."""
    return _running_pid(work_dir)


def _running_pid(work_dir: Path) -> int | None:
    """The pid in our pidfile when that process is still our registry, else None."""
    return running_pid(paths(work_dir)["pid"], str(paths(work_dir)["config"]), program=BINARY)


def stop_local_registry(work_dir: Path, timeout: float = 10.0) -> bool:
    """Stop the registry this work dir started (by its pidfile); True when one was stopped."""
    pid = _running_pid(work_dir)
    pidfile = paths(work_dir)["pid"]
    if pid is None:
        # From inside the tool's image the registry's pid is the host's: not visible here.
        stopped = own_container() is not None and _stop_beside(work_dir)
        with contextlib.suppress(FileNotFoundError):
            pidfile.unlink()
        return stopped
    terminate(pid, timeout)
    with contextlib.suppress(FileNotFoundError):
        pidfile.unlink()
    return True


