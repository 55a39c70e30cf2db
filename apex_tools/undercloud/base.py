"""The driver interface every undercloud implements."""

from __future__ import annotations

import contextlib
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from apex_tools.core.config import Options
from apex_tools.undercloud.playbook import playbook_path, run_playbook
from apex_tools.undercloud.shell import run_shell
from apex_tools.undercloud.ssh import SSHTarget


class Undercloud(ABC):
    """One undercloud, as the targets see it."""

    name = ""

    def __init__(self, options: Options, registry_address: str) -> None:
        self.options = options
        self._registry_address = registry_address

    @property
    def registry_address(self) -> str:
        """The registry as the undercloud and the overcloud name it (``<installer ip>:8787``)."""
        return self._registry_address

    @abstractmethod
    def ssh(self) -> SSHTarget | None:
        """The SSH connection to the undercloud; None when it is this host (no SSH needed)."""

    @contextlib.contextmanager
    def reachable_registry(self) -> Iterator[str]:
        """The registry as ``host:port`` reachable from this host, for the length of the block.

        Where the registry address is not reachable from here (a NAT'd VM, a remote undercloud)
        a driver opens an SSH local forward and closes it after.
        """
        yield self.registry_address

    def run_playbook(self, name: str, extra_vars: Mapping[str, Any], log_path: Path,
                     timeout: float | None = None) -> str:
        """Run the bundled playbook ``name`` on the undercloud (see ``playbook.run_playbook``)."""
        return run_playbook(playbook_path(name), self.ssh(), extra_vars, log_path, timeout=timeout)

    def run_command(self, command: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run a shell command on the undercloud (as the driver connects); output captured."""
        return run_shell(self.ssh(), command, timeout)

    def has_tripleo(self) -> bool:
        """True when the undercloud has TripleO's client (``openstack overcloud deploy``)."""
        found = self.run_command("command -v openstack >/dev/null 2>&1 && openstack help overcloud deploy >/dev/null 2>&1",
                                 timeout=120.0)
        return found.returncode == 0
