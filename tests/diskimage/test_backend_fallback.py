"""libguestfs falls back to TCG when the KVM launch hangs or fails, and remembers it.

The KVM attempt is made to hang or crash deterministically with a qemu wrapper
(``LIBGUESTFS_HV``) that refuses any launch asking for KVM and runs the real qemu otherwise, so
the test does not depend on whether this host's /dev/kvm works. The appliance itself is real.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from apex_tools.core.errors import ImageError
from apex_tools.diskimage.customize import TCG, Customization, customize, remembered_backend, sparse_copy
from conftest import need
from targets.test_ceph_loop import _have_tools, cached_base_image

QEMU = "/usr/bin/qemu-system-x86_64"
WRAPPER = """#!/bin/sh
# Every call is logged; an appliance launch (it boots a -kernel; libguestfs's capability probe
# does not) that asks for KVM {action}.
echo "$*" >> {log}
case "$*" in *-kernel*) case "$*" in *accel=kvm*) {command} ;; esac ;; esac
{tail}
"""


def _qemu(tmp: Path, action: str, command: str, tail: str = f'exec {QEMU} "$@"') -> Path:
    wrapper = tmp / f"qemu-{action.split()[0]}"
    wrapper.write_text(WRAPPER.format(action=action, command=command, tail=tail, log=tmp / "launches"))
    wrapper.chmod(0o755)
    return wrapper


def _kvm_attempts(tmp: Path) -> int:
    log = tmp / "launches"
    lines = log.read_text().splitlines() if log.exists() else []
    return sum("accel=kvm" in line for line in lines if "-kernel" in line)


@pytest.fixture()
def image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    need(_have_tools() and Path(QEMU).is_file(), "libguestfs-tools, qemu-system-x86, busybox-static and patch")
    base = cached_base_image()
    # The default backend, as a user's plain venv has it (the suite's force_tcg removed).
    monkeypatch.delenv("LIBGUESTFS_BACKEND_SETTINGS", raising=False)
    monkeypatch.setenv("LIBGUESTFS_BACKEND", "direct")
    copy = tmp_path / "disk.qcow2"
    sparse_copy(base, copy)
    return copy


def test_hung_kvm_launch_is_bounded_then_tcg_is_used_and_remembered(
        image: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIBGUESTFS_HV", str(_qemu(tmp_path, "hangs", "sleep 600")))
    memory = tmp_path / "work" / "state" / "libguestfs.json"
    started = time.monotonic()
    launch = customize(image, Customization().mkdir("/apex-first"), memory=memory, kvm_launch_seconds=5)
    assert launch.backend == TCG
    assert "hung for 5 s" in launch.note(), launch.note()
    assert _kvm_attempts(tmp_path) == 1
    assert time.monotonic() - started < 5 + 240, "the hung KVM attempt was not cut short"
    assert remembered_backend(memory) == TCG
    assert json.loads(memory.read_text())["why"].startswith("the KVM launch hung")


ABORT_ALL = 'case "$*" in *-kernel*) kill -ABRT $$ ;; esac; exec ' + QEMU + ' "$@"'


@pytest.mark.parametrize("remembered, tried", [(None, "under KVM and then TCG"), (TCG, "under TCG")],
                         ids=["both-fail-keep-the-hint", "remembered-tcg-skips-kvm"])
def test_failing_launches(image: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                          remembered: str | None, tried: str) -> None:
    monkeypatch.setenv("LIBGUESTFS_HV", str(_qemu(tmp_path, "aborts", "kill -ABRT $$", tail=ABORT_ALL)))
    memory = tmp_path / "libguestfs.json"
    if remembered:
        memory.write_text(json.dumps({"backend": remembered}))
    with pytest.raises(ImageError) as failed:
        customize(image, Customization().mkdir("/never"), memory=memory, kvm_launch_seconds=30)
    assert tried in str(failed.value)
    assert "force_tcg" in failed.value.hint
    assert _kvm_attempts(tmp_path) == (0 if remembered else 1)
    assert remembered_backend(memory) == remembered, "a backend that did not work was remembered"
