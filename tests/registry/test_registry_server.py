"""The local registry: started detached when ours and silent, left alone when running, stopped by pid."""

from __future__ import annotations

import subprocess
import sys

import pytest
import requests
import yaml

from apex_tools.core.errors import RegistryError
from apex_tools.registry.client import RegistryClient
from apex_tools.registry.server import ensure_local_registry, is_local_address, paths, plan_local_registry, stop_local_registry

from conftest import free_port, need


@pytest.mark.parametrize(
    "host, local",
    [("127.0.0.1", True), ("127.3.4.5", True), ("::1", True), ("localhost", True), ("203.0.113.7", False)],
    ids=["loopback", "loopback-range", "ipv6-loopback", "localhost-name", "foreign"],
)
def test_is_local_address(host, local):
    assert is_local_address(host) is local


@pytest.fixture
def work_dir(tmp_path):
    yield tmp_path / "work"
    stop_local_registry(tmp_path / "work")


def test_started_registry_outlives_the_starting_process_and_stops_by_pid(work_dir):
    need(__import__("shutil").which("docker-registry") is not None, "docker-registry")
    address = f"127.0.0.1:{free_port()}"
    client = RegistryClient(address, tls="http")
    assert plan_local_registry(address, client, start=True).startswith("start the local registry")
    script = (
        "import sys; from pathlib import Path; from apex_tools.registry.client import RegistryClient; "
        "from apex_tools.registry.server import ensure_local_registry as e; "
        f"r = e({address!r}, Path({str(work_dir)!r}), RegistryClient({address!r}, tls='http')); print(r.pid)"
    )
    pid = int(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout)
    # The starting process has exited; the registry still answers, with its files under the work dir.
    assert requests.get(f"http://{address}/v2/", timeout=5).status_code == 200
    where = paths(work_dir)
    assert int(where["pid"].read_text()) == pid
    config = yaml.safe_load(where["config"].read_text())
    assert config["http"]["addr"] == address
    assert config["storage"]["filesystem"]["rootdirectory"] == str(where["storage"])
    assert plan_local_registry(address, client, start=True) is None

    again = ensure_local_registry(address, work_dir, client)
    assert (again.started, again.pid) == (False, pid), "a running registry is left alone"

    assert stop_local_registry(work_dir)
    assert not client.ping()
    assert not where["pid"].exists()
    assert not stop_local_registry(work_dir)


def test_silent_registry_not_ours_to_start_is_an_error(work_dir):
    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(RegistryError, match="does not answer") as caught:
        ensure_local_registry(address, work_dir, RegistryClient(address, tls="http"), start=False)
    assert "registry.start" in caught.value.hint
    assert not paths(work_dir)["pid"].exists()


def test_registry_that_cannot_bind_reports_its_log(work_dir):
    # The port is taken by another process that does not speak HTTP: the start must fail loudly.
    import socket

    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        address = f"127.0.0.1:{blocker.getsockname()[1]}"
        client = RegistryClient(address, tls="http")
        client.ping = lambda: False  # the blocker accepts but never answers HTTP
        with pytest.raises(RegistryError, match="did not start") as caught:
            ensure_local_registry(address, work_dir, client)
        assert "address already in use" in str(caught.value)
        assert not paths(work_dir)["pid"].exists()


def test_a_second_start_from_the_same_work_dir_at_another_address_is_refused(work_dir):
    need(__import__("shutil").which("docker-registry") is not None, "docker-registry")
    first = f"127.0.0.1:{free_port()}"
    started = ensure_local_registry(first, work_dir, RegistryClient(first, tls="http"))
    other = f"127.0.0.1:{free_port()}"
    with pytest.raises(RegistryError, match=f"pid {started.pid}.* does not answer at http://{other}/v2/"):
        ensure_local_registry(other, work_dir, RegistryClient(other, tls="http"))
    assert int(paths(work_dir)["pid"].read_text()) == started.pid, "the first one is still the one recorded"
