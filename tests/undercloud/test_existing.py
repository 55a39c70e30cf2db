"""The undercloud target with the ``existing`` driver against a real loopback sshd: the checks,
configure_undercloud.yaml run for real by ansible-playbook, the records and re-runs."""

from __future__ import annotations

import configparser
import shutil
import time

import pytest

from apex_tools.core.config import Layer, resolve
from apex_tools.core.errors import SettingsError, UndercloudError
from apex_tools.core.run import RunContext, Status
from apex_tools.targets.undercloud import undercloud
from apex_tools.undercloud.drivers import driver_for
from apex_tools.undercloud.playbook import PlaybookError
from conftest import free_port, need
from ssh_support import sshd  # noqa: F401 (fixture)
from undercloud_support import existing_options, fake_undercloud, network_file


@pytest.fixture
def setup(sshd, registry, tmp_path):
    need(shutil.which("ansible-playbook") is not None, "ansible-playbook (Debian package ansible-core)")
    fake = fake_undercloud(sshd, tmp_path / "uc")
    network = network_file(tmp_path / "network.yaml")

    def options(**extra):
        return existing_options(fake, tmp_path / "work", registry.address, network, **extra)

    return fake, options, tmp_path / "work", network


@pytest.mark.slow
def test_configures_for_real_then_is_up_to_date(setup):
    fake, options, work, network = setup
    planned = undercloud(RunContext(options(), dry_run=True))
    assert planned.status is Status.PLANNED
    assert planned.changes == [f"run configure_undercloud.yaml on existing undercloud {fake.server.user}@127.0.0.1:"
                               f"{fake.server.port} (the undercloud does not report TripleO installed (no ~/stackrc))"]
    assert fake.calls_made() == [] and not work.joinpath("state").exists()

    result = undercloud(RunContext(options()))
    assert result.status is Status.CHANGED, result
    assert fake.calls_made() == ["undercloud install"]
    conf = configparser.ConfigParser(default_section="(none)")
    conf.read(fake.seen_conf)  # as `openstack undercloud install` saw it
    assert dict(conf["DEFAULT"]) == {
        "local_ip": "192.0.2.1/24", "undercloud_hostname": "undercloud.opnfvlf.org",
        "undercloud_ntp_servers": "pool.ntp.org",
        "container_images_file": f"{fake.home}/containers-prepare-parameter.yaml",
        "enable_ui": "false", "undercloud_update_packages": "false", "undercloud_debug": "false",
        "inspection_extras": "false", "generate_service_certificate": "false",
        "undercloud_enable_selinux": "false",
    }
    assert dict(conf["ctlplane-subnet"]) == {
        "cidr": "192.0.2.0/24", "gateway": "192.0.2.254", "dhcp_start": "192.0.2.2", "dhcp_end": "192.0.2.19",
        "inspection_iprange": "192.0.2.100,192.0.2.120",
    }
    install_log = work / "undercloud" / "apex-undercloud-install.log"
    assert "stand-in: installing the undercloud" in install_log.read_text()
    assert "TASK [Wait for the registry to answer]" in (work / "undercloud" / "configure_undercloud.log").read_text()
    record = RunContext(options()).state.load("undercloud")
    assert record.data["driver"] == "existing" and record.data["installed"] is True

    again = undercloud(RunContext(options()))
    assert (again.status, again.changes) == (Status.UP_TO_DATE, ["up to date"])
    assert fake.calls_made() == ["undercloud install"]

    # Changed inputs (the DHCP range) configure again.
    network_file(network, dhcp_range=["192.0.2.3", "192.0.2.19"])
    changed = undercloud(RunContext(options()))
    assert changed.status is Status.CHANGED and "its inputs changed" in changed.changes[0]
    assert fake.calls_made() == ["undercloud install"] * 2

    # An undercloud that no longer reports installed is configured again, same inputs or not.
    (fake.home / "stackrc").unlink()
    assert undercloud(RunContext(options())).status is Status.CHANGED
    assert len(fake.calls_made()) == 3


@pytest.mark.slow
def test_a_failed_install_is_retried_once(setup):
    fake, options, work, _ = setup
    fake.fail.write_text("1")
    result = undercloud(RunContext(options()))
    assert result.status is Status.CHANGED
    assert fake.calls_made() == ["undercloud install"] * 2
    log = (work / "undercloud" / "apex-undercloud-install.log").read_text()
    assert "install failed on purpose" in log and log.count("installing the undercloud") == 2


@pytest.mark.slow
def test_a_playbook_failure_names_the_task_the_host_and_the_output(setup):
    fake, options, work, _ = setup
    fake.fail.write_text("2")
    with pytest.raises(PlaybookError) as err:
        undercloud(RunContext(options()))
    message = str(err.value)
    assert "task 'Run openstack undercloud install again (one retry)' failed on undercloud" in message
    assert "non-zero return code" in message
    assert str(work / "undercloud" / "configure_undercloud.log") in err.value.hint
    # The log is fetched even when the install failed, and nothing was recorded.
    assert "install failed on purpose" in (work / "undercloud" / "apex-undercloud-install.log").read_text()
    assert RunContext(options()).state.load("undercloud") is None


def test_what_an_existing_undercloud_lacks_is_reported(sshd, registry, tmp_path):
    fake = fake_undercloud(sshd, tmp_path / "uc", with_openstack=False)
    fake.templates.rmdir()
    options = existing_options(fake, tmp_path / "work", registry.address, network_file(tmp_path / "n.yaml"))
    lacks = driver_for(options, registry.address).check()
    assert [lack.what.split(" (")[0] for lack in lacks] == ["openstack", "heat templates"]
    with pytest.raises(UndercloudError, match="lacks what TripleO needs") as err:
        undercloud(RunContext(options))
    assert "install python-tripleoclient" in str(err.value)
    assert str(fake.templates) in str(err.value)


def test_an_unreachable_host_fails_after_the_bounded_wait(tmp_path, registry):
    from ssh_support import keygen

    key = keygen(tmp_path / "key")
    port = free_port()
    options = resolve([Layer("test", {
        "work_dir": str(tmp_path / "work"),
        "undercloud": {"driver": "existing", "host": "127.0.0.1", "port": port, "user": "stack",
                       "ssh_key": str(key), "wait_timeout": 2.0},
    })]).options
    started = time.monotonic()
    with pytest.raises(UndercloudError, match=rf"SSH stack@127.0.0.1:{port}: not reachable within 2 s"):
        undercloud(RunContext(options))
    assert time.monotonic() - started < 10


def test_a_refusing_host_fails_fast_and_a_silent_one_gets_the_bounded_wait(tmp_path, registry):
    """A host that exists and refuses SSH is an answer: well within 30 s, not the 600 s boot wait.
    One that accepts and stays silent is retried until undercloud.wait_timeout."""
    import socket

    from ssh_support import keygen

    key = keygen(tmp_path / "key")
    port = free_port()

    def options(target_port: int, wait: float):
        return resolve([Layer("test", {
            "work_dir": str(tmp_path / "work"),
            "undercloud": {"driver": "existing", "host": "127.0.0.1", "port": target_port, "user": "stack",
                           "ssh_key": str(key), "wait_timeout": wait},
        })]).options

    started = time.monotonic()
    with pytest.raises(UndercloudError, match=rf"127.0.0.1 refuses connections on port {port}") as err:
        undercloud(RunContext(options(port, 600.0)))
    assert time.monotonic() - started < 30
    assert f"listens on port {port}" in err.value.hint
    with socket.socket() as silent:  # accepts (the kernel's backlog) and never sends a banner
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        started = time.monotonic()
        with pytest.raises(UndercloudError, match=r"not reachable within 4 s \(last: does not"):
            undercloud(RunContext(options(silent.getsockname()[1], 4.0)))
        assert 3.5 < time.monotonic() - started < 15


@pytest.mark.parametrize("undercloud_opts, message", [
    ({"host": "127.0.0.1", "ssh_key": "/nonexistent/id_rsa"}, "undercloud.ssh_key: /nonexistent/id_rsa does not exist"),
    ({"host": "", "ssh_key": "/nonexistent/id_rsa"}, "undercloud.host is empty"),
], ids=["missing key", "no host"])
def test_bad_existing_settings_are_named(tmp_path, undercloud_opts, message):
    options = resolve([Layer("test", {"work_dir": str(tmp_path), "undercloud": {"driver": "existing",
                                                                                  **undercloud_opts}})]).options
    with pytest.raises(UndercloudError, match=message):
        undercloud(RunContext(options))


def test_an_unknown_driver_lists_the_valid_ones():
    with pytest.raises(SettingsError, match=r"undercloud.driver: 'vmware': .*'libvirt', 'existing' or 'local'"):
        resolve([Layer("apex.yaml", {"undercloud": {"driver": "vmware"}})])


def test_the_local_driver_records_and_is_up_to_date(tmp_path):
    options = resolve([Layer("test", {"work_dir": str(tmp_path), "undercloud": {"driver": "local"},
                                      "registry": {"address": "127.0.0.1:5000"}})]).options
    first = undercloud(RunContext(options))
    assert first.status is Status.CHANGED and "local undercloud (this host)" in first.changes[0]
    assert undercloud(RunContext(options)).status is Status.UP_TO_DATE
