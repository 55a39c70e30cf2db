"""Staging folders and the sweep of what a killed run left: real processes, real folders."""

from __future__ import annotations

import os
import subprocess
import sys

from apex_tools.core.staging import staging_dir, sweep_stale, sweep_temp_files, users_of
from conftest import stop_process


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def test_a_staging_folder_is_removed_after_its_block_even_on_error(tmp_path):
    try:
        with staging_dir(tmp_path / "work:x", "ceph-loop") as stage:
            assert stage.name.startswith(f".ceph-loop.{os.getpid()}.")
            (stage / "partial").write_bytes(b"x")
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert list((tmp_path / "work:x").iterdir()) == []


def test_the_sweep_ends_the_processes_of_a_dead_runs_folder_and_keeps_a_live_ones(tmp_path):
    dead = tmp_path / f".ceph-loop.{_dead_pid()}.abc"
    old_style = tmp_path / ".ceph-loop.k2j3h4"  # from before folders carried a pid
    alive = tmp_path / f".ceph-loop.{os.getppid()}.def"  # pytest's parent runs: not ours to touch
    other = tmp_path / f".unpack-x.{_dead_pid()}.ghi"  # a kind not asked for
    for folder in (dead, old_style, alive, other):
        folder.mkdir()
    # A leftover child working in the dead run's folder (as virt-customize and qemu do).
    child = subprocess.Popen(["sleep", "300"], cwd=dead)
    try:
        assert users_of(dead) == [child.pid]
        swept = sweep_stale([tmp_path, tmp_path / "missing"], ["ceph-loop"])
        assert child.wait(timeout=15) is not None, "the leftover process was ended"
    finally:
        stop_process(child)
    assert not dead.exists() and not old_style.exists() and alive.exists() and other.exists()
    assert len(swept) == 2 and any("ended 1 process" in line for line in swept)


def test_unfinished_atomic_writes_are_removed(tmp_path):
    (tmp_path / ".docker-images.yaml.x1y2.tmp").write_text("half")
    (tmp_path / "docker-images.yaml").write_text("whole")
    assert sweep_temp_files([tmp_path, tmp_path / "missing"]) == [
        f"removed {tmp_path / '.docker-images.yaml.x1y2.tmp'} (a write a killed run left unfinished)"]
    assert [p.name for p in tmp_path.iterdir()] == ["docker-images.yaml"]
