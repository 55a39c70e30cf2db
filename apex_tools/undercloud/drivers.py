"""The choice of undercloud driver from the options (``undercloud.driver``)."""

from __future__ import annotations

from apex_tools.core.config import Options
from apex_tools.core.errors import UndercloudError
from apex_tools.core.settings import NetworkSettings
from apex_tools.undercloud.base import Undercloud
from apex_tools.undercloud.existing import ExistingUndercloud
from apex_tools.undercloud.local import LocalUndercloud


def driver_names() -> tuple[str, ...]:
    """The valid values of ``undercloud.driver``."""
    return ("libvirt", "existing", "local")


def driver_for(options: Options, registry_address: str, network_settings: NetworkSettings | None = None,
               os_version: str = "master") -> Undercloud:
    """The driver ``undercloud.driver`` names; an unknown name lists the valid ones.

    Creating a driver touches nothing (no connection is opened until it is used). The libvirt
    driver uses the network settings (which networks get a NIC, the admin CIDR's clash check)
    and the OpenStack version (which cached image it starts from).
    """
    name = options.undercloud.driver
    if name == "local":
        return LocalUndercloud(options, registry_address)
    if name == "existing":
        return ExistingUndercloud(options, registry_address)
    if name == "libvirt":
        # Imported here: the binding is only needed (and only loaded) for this driver.
        from apex_tools.undercloud.libvirt_vm import LibvirtUndercloud

        return LibvirtUndercloud(options, registry_address, network_settings, os_version)
    raise UndercloudError(
        f"undercloud.driver: unknown driver {name!r}",
        f"set undercloud.driver to one of: {', '.join(driver_names())}",
    )
