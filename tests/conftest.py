"""Shared fixtures: real services on free loopback ports, stopped after use, even on failure.

A missing runtime (no Docker engine, no docker-registry binary) skips the tests that need
it on a developer's machine; with ``APEX_TEST_REQUIRE_ALL=1`` (set by ``.ci/run``) it fails
them instead, so a green CI run always means the real path ran.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import shutil
import socket
import subprocess
import io
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

REQUIRE_ALL = os.environ.get("APEX_TEST_REQUIRE_ALL", "") not in ("", "0")
REPO = Path(__file__).resolve().parent.parent


def need(condition: bool, what: str) -> None:
    """Skip (or, in CI, fail) when a runtime the test needs is missing."""
    if condition:
        return
    if REQUIRE_ALL:
        pytest.fail(f"required runtime missing: {what} (APEX_TEST_REQUIRE_ALL is set)")
    pytest.skip(f"runtime missing: {what}")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float = 20.0, ok: tuple[int, ...] = (200, 401)) -> None:
    """Poll ``url`` until it answers with one of ``ok``."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            response = requests.get(url, timeout=2)
            if response.status_code in ok:
                return
            last = response.status_code
        except requests.ConnectionError as exc:
            last = exc
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout}s (last: {last})")


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """Terminate a process this test started (by its pid), then kill it if it lingers."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def serve_http(handler: type[http.server.BaseHTTPRequestHandler], host: str = "127.0.0.1") -> Iterator[str]:
    """Serve ``handler`` on a free port of ``host`` (loopback) in a thread; yields ``host:port``; stops after."""
    server = http.server.ThreadingHTTPServer((host, 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@dataclass
class Registry:
    """A running Debian docker-registry (distribution 2.8) bound to 127.0.0.1."""

    address: str
    root: Path
    process: subprocess.Popen[Any]
    auth: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://{self.address}"


@contextlib.contextmanager
def run_registry(root: Path, extra_config: dict[str, Any] | None = None) -> Iterator[Registry]:
    """Start ``docker-registry`` on a free loopback port with storage under ``root``; stop it after."""
    binary = shutil.which("docker-registry")
    need(binary is not None, "docker-registry (Debian package docker-registry)")
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(root / "data")}, "delete": {"enabled": True}},
        "http": {"addr": f"127.0.0.1:{port}", "secret": "apex-tools-test"},
    }
    config.update(extra_config or {})
    config_path = root / "config.yml"
    config_path.write_text(yaml.safe_dump(config))
    log = (root / "registry.log").open("wb")
    proc = subprocess.Popen([binary, "serve", str(config_path)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/v2/")
        yield Registry(f"127.0.0.1:{port}", root, proc, extra_config.get("auth", {}) if extra_config else {})
    finally:
        stop_process(proc)
        log.close()


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    """A fresh, empty registry on loopback."""
    with run_registry(tmp_path / "registry") as reg:
        yield reg


@pytest.fixture
def registry_factory(tmp_path: Path) -> Iterator[Callable[..., Registry]]:
    """Start as many registries as a test needs: ``registry_factory(name, extra_config=None)``."""
    with contextlib.ExitStack() as stack:

        def start(name: str = "reg", extra_config: dict[str, Any] | None = None) -> Registry:
            return stack.enter_context(run_registry(tmp_path / name, extra_config))

        yield start


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    """A Docker SDK client of the running engine."""
    import docker

    try:
        client = docker.from_env(timeout=300)
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means "no engine"
        need(False, f"a running Docker engine ({exc.__class__.__name__})")
    yield client
    client.close()


def _busybox_rootfs_tar() -> bytes:
    """A root filesystem of Debian's static busybox with its applets linked, as a tar."""
    busybox = Path("/bin/busybox")
    applets = subprocess.run([str(busybox), "--list"], capture_output=True, text=True, check=True).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for folder in ("bin", "etc", "tmp", "root", "usr", "usr/bin"):
            info = tarfile.TarInfo(folder)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if folder == "tmp" else 0o755
            tar.addfile(info)
        info = tarfile.TarInfo("bin/busybox")
        data = busybox.read_bytes()
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
        for applet in applets:
            if applet == "busybox":
                continue
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
        for name, text in (("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"), ("etc/group", "root:x:0:\n")):
            raw = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(raw), 0o644
            tar.addfile(info, io.BytesIO(raw))
    return buf.getvalue()


BUSYBOX_IMAGE = "apex-test/busybox:latest"


@pytest.fixture(scope="session")
def base_image(docker_client: Any) -> str:
    """A local base image made without any pull: Debian's busybox-static imported as a rootfs."""
    need(Path("/bin/busybox").exists(), "/bin/busybox (Debian package busybox-static)")
    docker_client.api.import_image_from_data(
        _busybox_rootfs_tar(), repository="apex-test/busybox", tag="latest",
        changes=['CMD ["/bin/sh"]', "ENV PATH=/bin:/usr/bin"],
    )
    return BUSYBOX_IMAGE


@pytest.fixture(scope="session")
def debian_image(docker_client: Any, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., str]:
    """``debian_image(*packages)``: a bookworm minbase image made with debootstrap, imported once.

    Images are tagged by their package set and reused across runs (debootstrap takes ~25 s).
    """
    import docker

    need(shutil.which("debootstrap") is not None, "debootstrap (Debian package debootstrap)")

    def make(*packages: str) -> str:
        tag = "apex-test/bookworm:" + ("-".join(sorted(packages)) or "minbase")
        try:
            docker_client.images.get(tag)
            return tag
        except docker.errors.ImageNotFound:
            pass
        root = tmp_path_factory.mktemp("debootstrap")
        cmd = ["debootstrap", "--variant=minbase"]
        if packages:
            cmd.append("--include=" + ",".join(sorted(packages)))
        subprocess.run(cmd + ["bookworm", str(root)], check=True, capture_output=True)
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        assert tar.stdout is not None
        repo, _, version = tag.partition(":")
        docker_client.api.import_image_from_data(tar.stdout.read(), repository=repo, tag=version)
        tar.wait()
        shutil.rmtree(root, ignore_errors=True)
        return tag

    return make


GOLDEN = REPO / "tests" / "golden"


def check_golden(name: str, text: str) -> None:
    """Compare ``text`` with ``tests/golden/<name>``; APEX_UPDATE_GOLDEN=1 rewrites it."""
    path = GOLDEN / name
    if os.environ.get("APEX_UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert path.read_text() == text, f"{name} differs from its golden file (APEX_UPDATE_GOLDEN=1 to accept)"


# --- the tool's image (helpers in tests/image_support.py) ---------------------------------------


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkout's wheel and all its dependencies' wheels, as README.md makes them."""
    from image_support import build_wheelhouse

    return build_wheelhouse(tmp_path_factory.mktemp("wheels"))


@pytest.fixture(scope="session")
def tool_image(docker_client: Any, debian_image: Callable[..., str], wheelhouse: Path,
               tmp_path_factory: pytest.TempPathFactory) -> str:
    """``apex-tools:test`` built once a session from Containerfile on a local bookworm base."""
    import apex_tools
    from image_support import build_tool_image

    need(shutil.which("docker") is not None, "the docker CLI (Debian package docker.io)")
    # python3-venv in the base lets the builder stage skip apt altogether.
    base = debian_image("python3", "python3-venv")
    return build_tool_image(base, wheelhouse, tmp_path_factory.mktemp("image-context"), apex_tools.__version__)
