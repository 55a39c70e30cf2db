"""Killed runs leave nothing behind: ``apex ceph-loop`` (a real libguestfs appliance) on a work dir
whose path holds ``:``, killed before the appliance (SIGKILL), during it (SIGINT, then SIGKILL),
then re-run: no staging folder, no virt-customize or qemu of ours, the outputs whole and the same
bytes on the next run."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from apex_tools.core.staging import users_of
from apex_tools.targets.ceph_loop import IMAGE_NAME, STORAGE_ENV
from conftest import REPO
from test_ceph_loop import GOOD_PATCH, base_qcow2, make_workspace  # noqa: F401 (fixture)


def _start(values: dict[str, object]) -> subprocess.Popen[str]:
    env = {**os.environ, **{f"APEX_{k.upper()}": str(v) for k, v in values.items()}}
    return subprocess.Popen([sys.executable, "-m", "apex_tools", "ceph-loop"], cwd=REPO, env=env, text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _staging(work: Path) -> list[Path]:
    return sorted(work.glob(".ceph-loop.*"))


def _wait_for(what, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = what()
        if found:
            return found
        time.sleep(0.02)
    raise AssertionError(f"not seen within {timeout} s")


def _appliance_running(stage: Path) -> bool:
    """virt-customize runs in the staging folder and its qemu has started."""
    names = set()
    for pid in users_of(stage):
        try:
            names.add(Path(f"/proc/{pid}/comm").read_text().strip())
        except OSError:
            continue
    return "virt-customize" in names and any(n.startswith("qemu") for n in names)


def _kill_when(values, work: Path, sig: int, during_appliance: bool) -> subprocess.CompletedProcess[str]:
    before = set(_staging(work))  # a killed run's, which this run sweeps
    proc = _start(values)
    try:
        stage = _wait_for(lambda: [p for p in _staging(work) if p not in before])[0]
        if during_appliance:
            _wait_for(lambda: _appliance_running(stage))
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _digests(work: Path) -> dict[str, str]:
    return {name: hashlib.sha256((work / name).read_bytes()).hexdigest() for name in (IMAGE_NAME, STORAGE_ENV)}


@pytest.mark.slow
def test_runs_killed_at_three_points_leave_nothing_and_the_rerun_is_whole(base_qcow2, tmp_path):
    root = tmp_path / "site:a"  # a colon in every path ceph-loop hands virt-customize
    root.mkdir()
    values = {**make_workspace(root, base_qcow2, patch=GOOD_PATCH), "ceph": {"virtual": True}}
    work = Path(str(values["work_dir"]))

    # 1. SIGKILL while the image is being staged (before the appliance): the folder stays behind.
    killed = _kill_when(values, work, signal.SIGKILL, during_appliance=False)
    assert killed.returncode == -signal.SIGKILL
    assert not (work / IMAGE_NAME).exists()

    # 2. SIGINT during the libguestfs step: the run ends itself, its appliance and its folder.
    stale = set(_staging(work))
    stopped = _kill_when(values, work, signal.SIGINT, during_appliance=True)
    assert stopped.returncode == 128 + signal.SIGINT, stopped.stderr
    assert "stopped by SIGINT" in stopped.stderr
    assert set(_staging(work)) <= stale, "the interrupted run removed its own staging folder"
    assert users_of(work) == [], "no virt-customize or qemu outlives the run"

    # 3. SIGKILL during the libguestfs step: its folder and appliance are left for the next run.
    killed = _kill_when(values, work, signal.SIGKILL, during_appliance=True)
    assert killed.returncode == -signal.SIGKILL
    assert _staging(work) and users_of(work), "SIGKILL leaves the folder and the appliance working in it"
    assert not (work / IMAGE_NAME).exists()

    # The re-run sweeps what the killed runs left (under the lock), then does the whole job.
    rerun = _start(values)
    out, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, out + err
    assert "left by a killed run" in out + err and "ended" in out + err
    assert _staging(work) == [] and users_of(work) == []
    first = _digests(work)

    # And the run after it has nothing to do: the same bytes.
    again = _start(values)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, out + err
    assert "up to date" in out
    assert _digests(work) == first and _staging(work) == []
