"""Run state: fingerprints, atomic writes that never leave half a file, the work-dir lock."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import time
from pathlib import Path

import pytest

from apex_tools.core.errors import StateError
from apex_tools.core.state import (
    StateStore,
    atomic_file,
    atomic_write,
    fingerprint,
    work_dir_lock,
    write_if_changed,
)


def test_fingerprint_is_stable_and_order_independent():
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})
    assert fingerprint({"p": Path("/x"), "s": {3, 1}}) == fingerprint({"p": "/x", "s": [1, 3]})


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "sub" / "out.yaml"
    atomic_write(target, "one\n")
    atomic_write(target, b"two\n")
    assert target.read_text() == "two\n"
    assert [p.name for p in target.parent.iterdir()] == ["out.yaml"]


def test_interrupted_write_leaves_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"good")
    with pytest.raises(RuntimeError):
        with atomic_file(target) as handle:
            handle.write(b"half of the new cont")
            raise RuntimeError("connection dropped")
    assert target.read_bytes() == b"good"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_write_if_changed_keeps_mtime_when_same(tmp_path):
    target = tmp_path / "f"
    assert write_if_changed(target, "x") is True
    before = target.stat().st_mtime_ns
    time.sleep(0.01)
    assert write_if_changed(target, "x") is False
    assert target.stat().st_mtime_ns == before
    assert write_if_changed(target, "y") is True


def test_state_is_current_until_inputs_or_outputs_change(tmp_path):
    store = StateStore(tmp_path)
    output = tmp_path / "artifact"
    output.write_text("v1")
    fp = fingerprint({"input": 1})
    assert not store.is_current("t", fp)
    store.save("t", fp, outputs=[output], data={"n": 1})
    assert store.is_current("t", fp)
    assert store.load("t").data == {"n": 1}
    assert not store.is_current("t", fingerprint({"input": 2}))
    output.write_text("tampered")
    assert not store.is_current("t", fp)


def test_deleted_output_or_corrupt_record_means_not_current(tmp_path):
    store = StateStore(tmp_path)
    output = tmp_path / "artifact"
    output.write_text("v1")
    store.save("t", "fp", outputs=[output])
    output.unlink()
    assert not store.is_current("t", "fp")
    (tmp_path / "state" / "t.json").write_text("{not json")
    assert store.load("t") is None


def _hold_lock(work_dir: str, ready, release) -> None:
    with work_dir_lock(Path(work_dir)):
        ready.set()
        release.wait(10)


def test_second_run_on_same_work_dir_fails_naming_the_holder(tmp_path):
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(tmp_path), ready, release))
    holder.start()
    try:
        assert ready.wait(10)
        with pytest.raises(StateError) as err:
            with work_dir_lock(tmp_path, timeout=0.2):
                pass
        assert f"in use by another apex run (pid {holder.pid})" in str(err.value)
    finally:
        release.set()
        holder.join(10)
    with work_dir_lock(tmp_path, timeout=1):
        assert (tmp_path / ".apex.lock.owner").read_text().strip() == f"pid {os.getpid()}"


def test_keyed_digest_is_per_work_dir_and_its_key_is_private(tmp_path):
    from apex_tools.core.state import DIGEST_KEY, keyed_digest

    secret = '{"pm_password": "hunter2"}'
    one, two = keyed_digest(tmp_path / "a", secret), keyed_digest(tmp_path / "b", secret)
    assert one.startswith("hmac-sha256:") and one != two, "the same file must not have the same digest everywhere"
    assert hashlib.sha256(secret.encode()).hexdigest() not in one
    assert keyed_digest(tmp_path / "a", secret) == one, "stable within a work dir"
    key = tmp_path / "a" / "state" / DIGEST_KEY
    assert key.stat().st_mode & 0o777 == 0o600
    key.chmod(0o644)
    assert keyed_digest(tmp_path / "a", secret) == one and key.stat().st_mode & 0o777 == 0o600
    # A dry run creates nothing.
    keyed_digest(tmp_path / "c", secret, create=False)
    assert not (tmp_path / "c").exists()


def test_a_secrets_file_with_the_same_content_is_made_private_again(tmp_path):
    path = tmp_path / "instackenv.json"
    path.write_text("{}")
    path.chmod(0o644)
    assert write_if_changed(path, "{}", mode=0o600) is False
    assert path.stat().st_mode & 0o777 == 0o600


def test_the_ceph_secrets_found_readable_are_made_private(tmp_path):
    from apex_tools.diskimage.storage_env import ensure_secrets, secrets_path

    first, new = ensure_secrets(tmp_path)
    assert new and secrets_path(tmp_path).stat().st_mode & 0o777 == 0o600
    secrets_path(tmp_path).chmod(0o644)
    again, new = ensure_secrets(tmp_path)
    assert (again, new) == (first, False) and secrets_path(tmp_path).stat().st_mode & 0o777 == 0o600
