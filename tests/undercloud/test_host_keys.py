"""SSH trusts the undercloud on first use, then pins its host key: paramiko (waits, commands, the
registry forward) and OpenSSH under ansible both refuse a loopback sshd whose host key changed;
``undercloud --recreate`` forgets the recorded key; ``undercloud.known_hosts`` is used as given."""

from __future__ import annotations

import shutil
import stat
import subprocess

import pytest

from apex_tools.core.errors import UndercloudError
from apex_tools.core.run import RunContext, Status
from apex_tools.targets.undercloud import undercloud
from apex_tools.undercloud.drivers import driver_for
from apex_tools.undercloud.playbook import PlaybookError, run_playbook
from apex_tools.undercloud.ssh import forget_host_key
from conftest import need
from ssh_support import sshd  # noqa: F401 (fixture)
from undercloud_support import existing_options, fake_undercloud, network_file

PING = "- hosts: undercloud\n  gather_facts: false\n  tasks:\n    - ansible.builtin.command: 'true'\n"


def fingerprint_of(server) -> str:
    """What ``ssh-keygen -lf`` says of the server's host key: ``SHA256:...``."""
    out = subprocess.run(["ssh-keygen", "-lf", str(server.root / "host_ed25519.pub")], check=True,
                         capture_output=True, text=True).stdout
    return out.split()[1]


@pytest.fixture
def existing(sshd, tmp_path, request):
    fake = fake_undercloud(sshd, tmp_path / "uc")
    network = network_file(tmp_path / "network.yaml")
    # The configure playbook waits for the registry: a real one where the whole target runs.
    registry = request.getfixturevalue("registry").address if "registry" in request.fixturenames else "127.0.0.1:1"

    def options(**extra):
        return existing_options(fake, tmp_path / "work", registry, network, **extra)

    return fake, options, tmp_path / "work" / "undercloud" / "known_hosts"


def test_first_contact_pins_then_a_changed_key_stops_paramiko_ansible_and_the_forward(existing, tmp_path):
    need(shutil.which("ansible-playbook") is not None, "ansible-playbook (Debian package ansible-core)")
    fake, options, known = existing
    driver = driver_for(options(forward_registry="always"), "127.0.0.1:1")
    first = fingerprint_of(fake.server)
    driver.wait()
    # Recorded, private, in OpenSSH's [host]:port form; a later connection checks it.
    assert stat.S_IMODE(known.stat().st_mode) == 0o600
    assert known.read_text().startswith(f"[127.0.0.1]:{fake.server.port} ssh-ed25519 ")
    assert driver.run("echo hi").stdout == "hi\n"
    playbook = tmp_path / "ping.yaml"
    playbook.write_text(PING)
    run_playbook(playbook, driver.ssh(), {}, tmp_path / "ping.log")  # OpenSSH accepts the pinned key

    fake.server.new_host_key()
    second = fingerprint_of(fake.server)
    assert second != first
    for attempt in (driver.wait, lambda: driver.run("true")):
        with pytest.raises(UndercloudError, match="the host key changed") as err:
            attempt()
        # Both fingerprints, the file, and what to do.
        assert first in err.value.message and second in err.value.message and str(known) in err.value.message
        assert "--recreate" in err.value.hint and "ssh-keygen -R" in err.value.hint
    with pytest.raises(UndercloudError, match="the host key changed"):
        with driver.reachable_registry():
            pass
    # OpenSSH, as ansible runs it, checks the same file on its own: it refuses too.
    with pytest.raises(PlaybookError, match="(?i)host key verification failed|UNREACHABLE"):
        run_playbook(playbook, driver.ssh(), {}, tmp_path / "ping.log")
    assert known.read_text().count("ssh-ed25519") == 1  # nothing was added or replaced


@pytest.mark.slow
def test_the_undercloud_target_stops_on_a_changed_key_and_recreate_trusts_the_new_one(registry, existing):
    need(shutil.which("ansible-playbook") is not None, "ansible-playbook (Debian package ansible-core)")
    fake, options, known = existing
    assert undercloud(RunContext(options())).status is Status.CHANGED
    pinned = known.read_text()
    fake.server.new_host_key()
    with pytest.raises(UndercloudError, match="the host key changed"):
        undercloud(RunContext(options()))
    assert known.read_text() == pinned
    again = undercloud(RunContext(options(), recreate=True))
    assert again.status is Status.CHANGED
    assert any("forgot the undercloud's recorded SSH host key" in c for c in again.changes)
    new_key = (fake.server.root / "host_ed25519.pub").read_text().split()[1]
    assert known.read_text() != pinned and new_key in known.read_text()
    assert undercloud(RunContext(options())).status is Status.UP_TO_DATE


def test_a_configured_known_hosts_is_required_and_never_written(existing, tmp_path):
    fake, options, recorded = existing
    given = tmp_path / "given_known_hosts"
    given.write_text("")
    driver = driver_for(options(known_hosts=str(given)), "127.0.0.1:1")
    with pytest.raises(UndercloudError, match="unknown host key") as err:
        driver.wait()
    assert fingerprint_of(fake.server) in err.value.message and str(given) in err.value.hint
    assert given.read_text() == "" and not recorded.exists()
    # The key put there by hand (as ssh-keyscan would) is accepted; forgetting never touches it.
    host_key = (fake.server.root / "host_ed25519.pub").read_text().split()
    given.write_text(f"[127.0.0.1]:{fake.server.port} {host_key[0]} {host_key[1]}\n")
    driver.wait()
    assert driver.forget_host_key() is None and given.read_text().count("ssh-ed25519") == 1


def test_forget_drops_only_the_named_host(tmp_path):
    known = tmp_path / "known_hosts"
    known.write_text("[127.0.0.1]:2222 ssh-ed25519 AAAA1\n192.0.2.1 ssh-ed25519 AAAA2\n")
    assert forget_host_key(known, "127.0.0.1", 2222)
    assert known.read_text() == "192.0.2.1 ssh-ed25519 AAAA2\n"
    assert not forget_host_key(known, "127.0.0.1", 2222)
    assert forget_host_key(known) and not known.exists()


def test_a_playbook_as_first_contact_records_the_key_first(existing, tmp_path):
    need(shutil.which("ansible-playbook") is not None, "ansible-playbook (Debian package ansible-core)")
    fake, options, known = existing
    playbook = tmp_path / "ping.yaml"
    playbook.write_text(PING)
    run_playbook(playbook, driver_for(options(), "127.0.0.1:1").ssh(), {}, tmp_path / "ping.log")
    assert known.read_text().startswith(f"[127.0.0.1]:{fake.server.port} ssh-ed25519 ")
