"""The driver interface every undercloud implements, and the choice of driver from the options."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from apex_tools.core.config import Options
from apex_tools.core.errors import ApexError


class UndercloudError(ApexError):
    """The undercloud cannot be created, reached or configured."""


@dataclass(frozen=True)
class SSHTarget:
    """How this host reaches the undercloud over SSH."""

    host: str
    port: int
    user: str
    key: Path


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


def driver_names() -> tuple[str, ...]:
    """The valid values of ``undercloud.driver``."""
    return ("libvirt", "existing", "local")


def driver_for(options: Options, registry_address: str) -> Undercloud:
    """The driver ``undercloud.driver`` names; an unknown name lists the valid ones."""
    name = options.undercloud.driver
    if name == "local":
        from apex_tools.undercloud.local import LocalUndercloud

        return LocalUndercloud(options, registry_address)
    raise UndercloudError(
        f"undercloud driver {name!r} is not built yet",
        f"set undercloud.driver to one of: {', '.join(driver_names())}",
    )
