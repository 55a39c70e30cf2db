"""An "existing" undercloud for the tests: the loopback sshd plus stand-ins for TripleO's commands.

Only TripleO's own commands are faked: ``openstack`` is a script on the sshd's PATH that records
its arguments (one line a call) and, for ``undercloud install``, leaves ``stackrc`` in the
current folder as the real install leaves it in the stack user's home. A file ``fail-install``
beside it makes the next N installs fail (its content is N).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from apex_tools.core.config import Layer, Options, resolve
from apex_tools.core.config import settings_path
from ssh_support import SSHServer

OPENSTACK = """\
#!/bin/sh
echo "$*" >> {calls}
if [ "$1 $2" = "undercloud install" ]; then
    echo "stand-in: installing the undercloud in $(pwd)"
    left=$(cat {fail} 2>/dev/null || echo 0)
    if [ "$left" -gt 0 ]; then
        echo $((left - 1)) > {fail}
        echo "stand-in: install failed on purpose" >&2
        exit 1
    fi
    cp undercloud.conf {seen_conf}
    echo "export OS_CLOUD=undercloud" > stackrc
fi
"""


@dataclass
class FakeUndercloud:
    server: SSHServer
    home: Path
    templates: Path
    ceph_ansible: Path
    calls: Path
    fail: Path
    seen_conf: Path

    def calls_made(self) -> list[str]:
        return self.calls.read_text().splitlines() if self.calls.exists() else []


def fake_undercloud(server: SSHServer, root: Path, with_openstack: bool = True) -> FakeUndercloud:
    root.mkdir(parents=True, exist_ok=True)
    fake = FakeUndercloud(server, root / "home", root / "tht", root / "ceph-ansible", root / "calls.log",
                          server.bin_dir / "fail-install", root / "undercloud.conf.seen")
    for folder in (fake.home, fake.templates, fake.ceph_ansible):
        folder.mkdir(exist_ok=True)
    if with_openstack:
        script = server.bin_dir / "openstack"
        script.write_text(OPENSTACK.format(calls=fake.calls, fail=fake.fail, seen_conf=fake.seen_conf))
        script.chmod(0o755)
    return fake


def network_file(path: Path, **admin: Any) -> Path:
    """The bundled network settings with the admin network's gateway elsewhere (no NAT on this host)."""
    data = yaml.safe_load(settings_path("network_settings", "network").read_text())
    data["networks"]["admin"]["gateway"] = "192.0.2.254"
    data["networks"]["admin"].update(admin)
    path.write_text(yaml.safe_dump(data))
    return path


def existing_options(fake: FakeUndercloud, work: Path, registry: str, network: Path, **undercloud: Any) -> Options:
    data = {
        "work_dir": str(work),
        "network_settings": str(network),
        "registry": {"address": registry},
        # Its trust files would go to this host's /etc/containers (test_trust_playbook places them in a folder).
        "signing": {"enabled": False},
        "undercloud": {
            "driver": "existing", "host": fake.server.host, "port": fake.server.port, "user": fake.server.user,
            "ssh_key": str(fake.server.key), "home": str(fake.home), "templates_dir": str(fake.templates),
            "ceph_ansible_dir": str(fake.ceph_ansible), "wait_timeout": 20.0, "playbook_timeout": 300.0,
            **undercloud,
        },
    }
    return resolve([Layer("test", data)]).options
