"""Faults end fast and clear: a real upstream registry killed mid-mirror, a real local registry
killed mid-push (by pid), and one that refuses connections from the start."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from apex_tools.core.errors import RegistryError
from apex_tools.core.processes import running_pid
from apex_tools.core.reference import ImageRef
from apex_tools.registry.client import RegistryClient
from apex_tools.registry.mirror import FAILED, CopyJob, Mirror, failure_summary
from apex_tools.registry.server import paths
from conftest import free_port
from registry_support import layer_blob, push_image, seed_default_deployment

IMAGES = 6
# The summary's and the last line's limit: well under the 80-90 s the retries used to take.
FAST = 15.0


def _seed(registry_factory, size: int = 3_000_000):
    upstream = registry_factory("upstream")
    client = RegistryClient(upstream.address, tls="http")
    for i in range(IMAGES):
        # Random (incompressible) layers large enough that a kill lands in the middle of the copy.
        push_image(client, f"apex/svc{i}", "v1", [layer_blob(f"svc{i}", size, seed=str(i))])
    return upstream


def _jobs(source: str, target: str) -> list[CopyJob]:
    return [CopyJob(ImageRef.parse(f"{source}/apex/svc{i}:v1"), ImageRef.parse(f"{target}/apex/svc{i}:v1"))
            for i in range(IMAGES)]


@pytest.mark.parametrize("victim", ["upstream", "local"])
def test_a_registry_killed_mid_mirror_fails_fast_with_the_root_cause(registry_factory, victim):
    upstream = _seed(registry_factory)
    local = registry_factory("local")
    killed = threading.Event()
    procs = {"upstream": upstream.process, "local": local.process}
    clients = {r.address: RegistryClient(r.address, tls="http") for r in (upstream, local)}

    def on_bytes(_amount: int) -> None:
        if not killed.is_set():
            killed.set()
            os.kill(procs[victim].pid, signal.SIGKILL)  # the registry we started, by its pid

    started = time.monotonic()
    results = Mirror(clients.__getitem__, jobs=2, on_bytes=on_bytes).copy_all(_jobs(upstream.address, local.address))
    took = time.monotonic() - started
    assert killed.is_set()
    failed = [r for r in results if r.status == FAILED]
    assert failed, "the kill must fail images"
    assert took < FAST, f"gave up after {took:.1f} s"
    dead = upstream.address if victim == "upstream" else local.address
    for result in failed:
        # One line: the registry, the image, the root cause; no urllib3 nesting.
        assert "\n" not in result.detail and len(result.detail) < 200, result.detail
        assert dead in result.detail, result.detail
        assert any(cause in result.detail for cause in ("connection refused", "connection broken",
                                                        "connection reset")), result.detail
        assert "HTTPConnectionPool" not in result.detail and "Max retries" not in result.detail


def test_a_registry_refusing_connections_is_given_up_on_within_seconds():
    address = f"127.0.0.1:{free_port()}"  # nothing listens
    client = RegistryClient(address, tls="http")
    started = time.monotonic()
    with pytest.raises(RegistryError) as err:
        client.head_manifest("apex/svc", "v1")
    assert time.monotonic() - started < FAST
    assert err.value.message == f"registry {address}/apex/svc:v1: connection refused"
    started = time.monotonic()
    with pytest.raises(RegistryError, match="connection refused"):
        client.tags("apex/other")  # given up on: at once
    assert time.monotonic() - started < 0.5


def test_failure_summary_names_registry_cause_and_the_first_images(registry_factory):
    upstream = _seed(registry_factory, size=1000)
    dead = f"127.0.0.1:{free_port()}"
    clients = {a: RegistryClient(a, tls="http") for a in (upstream.address, dead)}
    results = Mirror(clients.__getitem__).copy_all(_jobs(upstream.address, dead))
    assert {r.status for r in results} == {FAILED}
    assert failure_summary(results) == (f"{IMAGES} of {IMAGES} images failed: registry {dead}: connection refused "
                                        f"(svc0, svc1, svc2 and {IMAGES - 3} more)")


def test_the_cli_ends_naming_the_local_registry_killed_mid_push(registry_factory, tmp_path):
    """apex push-registry starts its local registry; it is killed (by the pid apex recorded) once the
    first image reaches it: the run ends within seconds, the last error line names it and the cause."""
    upstream = registry_factory("upstream")
    seed_default_deployment(RegistryClient(upstream.address, tls="http"), except_image="")
    work, local = tmp_path / "work", f"127.0.0.1:{free_port()}"
    env = {**os.environ, "APEX_WORK_DIR": str(work), "APEX_UPSTREAM_REGISTRY": upstream.address,
           "APEX_UPSTREAM_CEPH_REGISTRY": upstream.address, "APEX_UPSTREAM_INSECURE": "true",
           "APEX_REGISTRY_ADDRESS": local, "COLUMNS": "200"}
    proc = subprocess.Popen([sys.executable, "-m", "apex_tools", "push-registry"], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    pidfile = paths(work)["pid"]
    repositories = paths(work)["storage"] / "docker" / "registry" / "v2" / "repositories"
    killed_at = None
    try:
        deadline = time.monotonic() + 60
        while killed_at is None and proc.poll() is None and time.monotonic() < deadline:
            pid = running_pid(pidfile, str(paths(work)["config"]), "docker-registry") if pidfile.exists() else None
            if pid and repositories.is_dir():
                os.kill(pid, signal.SIGKILL)
                killed_at = time.monotonic()
            time.sleep(0.005)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert killed_at is not None, "the registry was never seen answering"
    assert time.monotonic() - killed_at < FAST
    assert proc.returncode == 1, err
    # The error's line (a hint may follow it): with the run writing into the registry's storage,
    # the kill shows when the registry is asked whether it serves what was written.
    last = [line for line in err.strip().splitlines() if not line.startswith("  hint: ")][-1]
    assert last.startswith("apex: ") and f"registry {local}" in last and "connection refused" in last, last
    if "images failed" in last:  # else every copy was done before the kill, and the final check found it gone
        assert last.startswith("apex: push-registry: ") and re.search(r"\(\S+, \S+, \S+ and \d+ more\)", last), last
    assert "HTTPConnectionPool" not in out + err and "Max retries" not in out + err
