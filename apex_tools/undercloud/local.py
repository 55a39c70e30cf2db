"""The ``local`` driver: this host plays the undercloud (the lab, or a jumphost that is one)."""

from __future__ import annotations

from apex_tools.undercloud.base import Undercloud
from apex_tools.undercloud.ssh import SSHTarget


class LocalUndercloud(Undercloud):
    """Playbooks run with a local connection; the registry is this host's."""

    name = "local"
    configures = False

    def ssh(self) -> SSHTarget | None:
        return None
