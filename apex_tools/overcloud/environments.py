"""The environment files deploy writes, rendered from the Jinja2 templates under ``build/``.

Rendering is deterministic: StrictUndefined, inputs in a fixed order, no paths or times.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


from apex_tools.core.errors import SettingsError
from apex_tools.core.templates import render
from apex_tools.core.settings import NetworkSettings
from apex_tools.core.workdir import BAREMETAL_ENV, NETWORK_DATA, NETWORK_ENV, UPSTREAM_ENV, VIRTUAL_ENV
from apex_tools.overcloud.inventory import Scale

# Releases whose THT names the puppet config process count DockerPuppetProcessCount (Apex set it).
DOCKER_PUPPET_RELEASES = ("queens", "rocky", "stein")
# Releases whose `openstack overcloud deploy` still takes --control-scale/--*-flavor; later ones
# take ControllerCount/ComputeCount/Overcloud*Flavor as parameters (in the node environment).
SCALE_FLAG_RELEASES = ("queens", "rocky")
# TripleO's isolated networks (name, name_lower, has a VIP, default subnet) as its network_data.yaml lists them.
ISOLATED_NETWORKS = (
    ("External", "external", True, "10.0.0.0/24"),
    ("InternalApi", "internal_api", True, "172.16.2.0/24"),
    ("Storage", "storage", True, "172.16.1.0/24"),
    ("StorageMgmt", "storage_mgmt", True, "172.16.3.0/24"),
    ("Tenant", "tenant", False, "172.16.0.0/24"),
    ("Management", "management", False, "10.0.1.0/24"),
)
# Apex's network settings name these; deploy does not wire isolated networks (NIC configs) yet.
APEX_NETWORKS = ("external", "api", "storage", "tenant")



def _render(name: str, **values: object) -> str:
    text = render("build", name + ".j2", **values)
    return text if text.endswith("\n") else text + "\n"


def enabled_isolated_networks(ns: NetworkSettings) -> list[str]:
    """The Apex networks besides admin that the settings enable (deploy refuses them for now)."""
    found = []
    for name in APEX_NETWORKS:
        value = getattr(ns.networks, name)
        entries = value if isinstance(value, list) else [value] if value is not None else []
        for entry in entries:
            # external is a list of {name: {...}} in Apex's format; the others a mapping.
            inner = list(entry.values())[0] if isinstance(entry, dict) and len(entry) == 1 and \
                isinstance(list(entry.values())[0], dict) else entry
            if isinstance(inner, dict) and inner.get("enabled", True):
                found.append(name)
    return sorted(set(found))


def network_environment(ns: NetworkSettings, source: str) -> str:
    """``network-environment.yaml``: the ctlplane as the undercloud serves it, DNS, NTP, domain."""
    extra = enabled_isolated_networks(ns)
    if extra:
        raise SettingsError(
            f"{source}: networks {', '.join(extra)}: isolated overcloud networks are not supported by deploy yet",
            f"set networks.<name>.enabled: false for {', '.join(extra)} (every service then uses the admin network)",
        )
    admin = ns.admin
    return _render(
        NETWORK_ENV,
        ctlplane_prefix=admin.cidr.prefixlen,
        ctlplane_gateway=str(admin.gateway or admin.installer_vm.ip),
        undercloud_ip=str(admin.installer_vm.ip),
        dns_servers=list(ns.dns_nameservers),
        ntp_servers=list(ns.ntp),
        domain=ns.domain_name,
    )


@dataclass(frozen=True)
class _Net:
    name: str
    name_lower: str
    vip: bool
    ip_subnet: str
    start: str
    end: str


def network_data() -> str:
    """``network_data.yaml`` (``--networks-file``): TripleO's isolated networks, all disabled."""
    nets = []
    for name, lower, vip, cidr in ISOLATED_NETWORKS:
        net = ipaddress.ip_network(cidr)
        nets.append(_Net(name, lower, vip, cidr, str(net[4]), str(net[250])))
    return _render(NETWORK_DATA, networks=nets)


def upstream_environment(os_version: str) -> str:
    """``upstream-environment.yaml``: what every deployment of upstream TripleO sets."""
    return _render(UPSTREAM_ENV, puppet_process_count=10 if os_version in DOCKER_PUPPET_RELEASES else 0,
                   network_type="vxlan")


def node_environment_name(virtual: bool) -> str:
    return VIRTUAL_ENV if virtual else BAREMETAL_ENV


def node_environment(virtual: bool, os_version: str, scale: Scale) -> str:
    """``virtual-environment.yaml`` or ``baremetal-environment.yaml`` (with the counts where the
    release takes them as parameters)."""
    return _render(node_environment_name(virtual), counts=os_version not in SCALE_FLAG_RELEASES,
                   control_scale=scale.control, compute_scale=scale.compute)
