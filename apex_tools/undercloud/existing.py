"""The ``existing`` driver: an undercloud already installed, reached over SSH."""

from __future__ import annotations

from apex_tools.core.errors import UndercloudError
from apex_tools.undercloud.base import SSHUndercloud, require_key
from apex_tools.undercloud.ssh import SSHTarget


class ExistingUndercloud(SSHUndercloud):
    """``undercloud.host``, ``.port``, ``.user`` and ``.ssh_key`` name it; nothing is created."""

    name = "existing"
    # It exists already: a refusal is an answer (sshd down, wrong port), not a boot in progress.
    refused_wait = 15.0

    def ssh(self) -> SSHTarget:
        uc = self.options.undercloud
        if not uc.host:
            raise UndercloudError("undercloud.host is empty (the existing driver needs it)",
                                  "set undercloud.host to the undercloud's address (APEX_UNDERCLOUD_HOST)")
        return self.ssh_target(uc.host, require_key(uc.key_path))
