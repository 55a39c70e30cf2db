"""The SSH wait, commands and the missing-key errors against a real loopback sshd."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest

from apex_tools.core.errors import UndercloudError
from apex_tools.undercloud.ssh import Session, SSHTarget, wait_for_ssh
from conftest import free_port
from ssh_support import keygen, run_sshd, sshd  # noqa: F401 (fixture)


def target_of(server) -> SSHTarget:
    # Trust on first use, in a file of the server's test folder.
    return SSHTarget(server.host, server.port, server.user, server.key, server.root / "known_hosts", pin=True)


def test_wait_returns_once_ssh_true_succeeds(sshd):
    started = time.monotonic()
    wait_for_ssh(target_of(sshd), timeout=10)
    assert time.monotonic() - started < 5


def test_wait_covers_the_time_before_sshd_listens(tmp_path):
    with run_sshd(tmp_path / "sshd", start=False) as server:
        attempts: list[str] = []
        starter = threading.Timer(1.5, server.start)
        starter.start()
        try:
            wait_for_ssh(target_of(server), timeout=20, interval=0.2,
                         on_wait=lambda why, elapsed: attempts.append(why))
        finally:
            starter.join()
        # It was refused while nothing listened, then got in.
        assert attempts and all("refuses connections" in why for why in attempts)
        assert server.pid


def test_wait_gives_up_after_its_timeout_naming_the_cause(tmp_path):
    key = keygen(tmp_path / "key")
    port = free_port()  # nothing listens there
    started = time.monotonic()
    with pytest.raises(UndercloudError, match=rf"SSH root@127.0.0.1:{port}: not reachable within 2 s "
                                              r"\(last: refuses connections"):
        wait_for_ssh(SSHTarget("127.0.0.1", port, "root", key), timeout=2, interval=0.2)
    assert 1.5 < time.monotonic() - started < 6


def test_a_refused_key_fails_at_once(sshd, tmp_path):
    other = keygen(tmp_path / "other")
    started = time.monotonic()
    with pytest.raises(UndercloudError, match="refuses key") as err:
        wait_for_ssh(replace(target_of(sshd), key=other), timeout=30)
    assert time.monotonic() - started < 10
    assert "authorized_keys" in err.value.hint


def test_a_missing_key_is_named(tmp_path):
    with pytest.raises(UndercloudError, match=f"SSH key {tmp_path / 'nope'} does not exist"):
        wait_for_ssh(SSHTarget("127.0.0.1", 22, "root", tmp_path / "nope"), timeout=5)


def test_commands_return_status_and_output_with_the_bin_dir_on_path(sshd):
    (sshd.bin_dir / "hello").write_text("#!/bin/sh\necho \"hello $*\"; echo oops >&2; exit 3\n")
    (sshd.bin_dir / "hello").chmod(0o755)
    with Session(target_of(sshd)) as session:
        result = session.run("hello there")
    assert (result.status, result.stdout, result.stderr) == (3, "hello there\n", "oops\n")
