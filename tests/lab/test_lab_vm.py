"""The VM lab for real: ``scripts/apex deploy --lab --vm`` boots a qemu guest under a real libvirtd,
reaches it through qemu's user-mode SSH forward, configures it with the playbook and ends ``ready``;
then the rest of its lifecycle on that one boot (re-run, ``lab status``, a changed definition),
``--recreate`` (the second boot), and ``lab down`` leaving no qemu and no libvirtd.

About 15 minutes under TCG: it runs only with ``APEX_TEST_VM=1`` (``.ci/run`` has a step for it).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from apex_tools.lab import libvirtd
from apex_tools.lab.stand import libvirt_root
from conftest import free_port, need
from apex_tools.undercloud.drivers import driver_for
from lab_support import json_documents, lab_env, lab_options, vm_lab_options

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.skipif(os.environ.get("APEX_TEST_VM") != "1",
                                                    reason="the VM lab takes ~15 min: APEX_TEST_VM=1 runs it")]


def scripts_apex(args: list[str], env: dict[str, str], timeout: float = 1800,
                 check: bool = True) -> subprocess.CompletedProcess[str]:
    """``./scripts/apex ARGS`` exactly as a user runs it (the wrapper, not the module)."""
    proc = subprocess.run([str(REPO / "scripts" / "apex"), *args], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"apex {' '.join(args)} exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-6000:]}")
    return proc


def qemu_pids(name: str) -> list[int]:
    """qemu processes running the domain ``name`` (libvirt passes ``-name guest=<name>``)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"qemu-system-x86_64") and any(a.startswith(f"guest={name},".encode()) for a in argv):
            found.append(int(proc.name))
    return found


def rows_of(stdout: str) -> dict[str, dict]:
    return {row["target"]: row for row in json_documents(stdout)[0]}


def no_default_network() -> None:
    """libvirt's default NAT network never comes up here: no 192.168.122.1, no virbr0, no autostart mark."""
    addresses = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    assert "192.168.122." not in addresses and "virbr0" not in addresses, addresses
    assert not libvirtd.DEFAULT_AUTOSTART.exists()


def test_the_vm_lab_boots_configures_reruns_recreates_and_goes_down(tmp_path: Path) -> None:
    need(Path("/usr/sbin/libvirtd").exists() and Path("/usr/bin/qemu-system-x86_64").exists(),
         "libvirt-daemon-system and qemu-system-x86 (scripts/debian-packages.txt)")
    env = lab_env(tmp_path)
    name = f"apex-test-{uuid.uuid4().hex[:8]}"
    forward = free_port()
    env.update({"APEX_UNDERCLOUD_NAME": name, "APEX_UNDERCLOUD_POOL": name, "APEX_UNDERCLOUD_SSH_FORWARD": str(forward)})
    try:
        # The first run: the lab, the image, the boot (lease-less: the forward), SSH, the playbook.
        started = time.monotonic()
        first = scripts_apex(["deploy", "--lab", "--vm", "--json"], env)
        first_seconds = time.monotonic() - started
        rows = rows_of(first.stdout)
        assert rows["deploy"]["status"] == "ready", rows["deploy"]
        changes = rows["undercloud"]["changes"]
        assert f"defined domain {name}" in changes and f"started domain {name}" in changes, changes
        assert any(c.startswith(f"domain {name} runs under ") for c in changes), changes
        assert "libvirtd" in first.stderr + first.stdout
        assert len(qemu_pids(name)) == 1
        no_default_network()
        # The guest, over the forward: a qemu VM (not this host) that ran TripleO's stand-in install.
        with socket.create_connection(("127.0.0.1", forward), timeout=10) as sock:
            assert sock.recv(4) == b"SSH-"
        driver = driver_for(vm_lab_options(env), "unused")
        assert driver.run("systemd-detect-virt").stdout.strip() in ("qemu", "kvm")
        assert "undercloud install" in driver.run("cat ~/openstack-calls.log").stdout
        assert "local_ip" in driver.run("cat ~/undercloud.conf").stdout
        # push-registry went through the SSH forward to this host's registry (10.0.2.2 from the guest).
        assert rows["push-registry"]["status"] == "changed", rows["push-registry"]

        # The re-run: all up to date, one SSH check on the undercloud.
        started = time.monotonic()
        again = rows_of(scripts_apex(["deploy", "--lab", "--vm", "--json"], env).stdout)
        rerun_seconds = time.monotonic() - started
        assert {r["status"] for r in again.values()} <= {"up to date"}, again
        # ~13 s on an idle machine; every SSH session to a TCG guest costs seconds under load.
        assert rerun_seconds < 60, rerun_seconds

        status = scripts_apex(["lab", "status"], env).stdout
        assert f"undercloud VM {name}" in status and f"127.0.0.1:{forward}  running" in status, status

        # A changed definition stops with the difference and touches nothing.
        changed = {**env, "APEX_UNDERCLOUD_MEMORY": "1152"}
        refused = scripts_apex(["deploy", "--lab", "--vm"], changed, check=False)
        assert refused.returncode != 0
        said = refused.stdout + refused.stderr
        assert f"the definition of libvirt domain '{name}' changed" in said and "+  <memory unit='MiB'>1152" in said, said
        assert "--recreate" in said
        # --recreate: destroyed, undefined, rebuilt, booted and configured again.
        rebuilt = rows_of(scripts_apex(["deploy", "--lab", "--vm", "--recreate", "--json"], changed).stdout)
        assert rebuilt["undercloud"]["changes"][0].startswith(f"destroyed and undefined domain {name}"), rebuilt
        assert any("volume was prepared just now" in c for c in rebuilt["undercloud"]["changes"]), rebuilt
        assert rebuilt["deploy"]["status"] in ("ready", "up to date"), rebuilt["deploy"]
        assert len(qemu_pids(name)) == 1
        assert "<memory unit='KiB'>1179648" in subprocess.run(
            ["virsh", "-c", libvirtd.URI, "dumpxml", name], capture_output=True, text=True, check=True).stdout
        print(f"deploy --lab --vm: first run {first_seconds:.0f} s, re-run {rerun_seconds:.1f} s")
    finally:
        down = scripts_apex(["lab", "down"], env, check=False)
    assert down.returncode == 0, down.stdout + down.stderr
    assert f"domain {name}" in down.stdout and "destroyed and undefined" in down.stdout, down.stdout
    assert qemu_pids(name) == [], "lab down left the VM's qemu running"
    pids = libvirtd.daemon_pids(libvirt_root(lab_options(env)))
    assert pids == {"virtlogd": None, "libvirtd": None}, pids
    no_default_network()
    assert not (libvirt_root(lab_options(env)) / "vm.json").exists()
