"""The overcloud nodes: Apex's inventory file, validated like the settings files, and TripleO's
``instackenv.json`` made from it.

An Apex inventory is ``nodes: {<name>: {mac_address, ipmi_ip, ipmi_user, ipmi_pass, pm_type,
[pm_port], cpus, memory, disk, arch, capabilities}}``; ``capabilities`` holds ``profile:control``
or ``profile:compute`` (plus any other ``key:value`` Ironic capabilities).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from apex_tools.core.errors import SettingsError
from apex_tools.core.settings import _read_yaml, _Strict, validate_model

PROFILES = ("control", "compute")
MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
CAPABILITY = re.compile(r"^[A-Za-z0-9_.-]+:[A-Za-z0-9_.-]+$")


class Node(_Strict):
    """One node as Apex's inventory describes it."""

    mac_address: str | tuple[str, ...]
    ipmi_ip: str = Field(min_length=1)
    ipmi_user: str = Field(min_length=1)
    ipmi_pass: str = Field(min_length=1, repr=False)
    pm_type: Literal["ipmi", "pxe_ipmitool", "redfish", "idrac", "ilo"] = "ipmi"
    pm_port: int | None = Field(default=None, ge=1, le=65535)
    cpus: int = Field(ge=1)
    memory: int = Field(ge=1024, description="MiB")
    disk: int = Field(ge=1, description="GiB")
    arch: Literal["x86_64", "aarch64", "ppc64le"] = "x86_64"
    capabilities: str

    @field_validator("mac_address")
    @classmethod
    def _macs(cls, value: str | tuple[str, ...]) -> str | tuple[str, ...]:
        macs = (value,) if isinstance(value, str) else value
        if not macs:
            raise ValueError("give the MAC address of the node's provisioning NIC")
        for mac in macs:
            if not MAC.match(mac.lower()):
                raise ValueError("a MAC address is six lowercase hex pairs separated by ':' (52:54:00:12:34:56)")
        return value

    @field_validator("capabilities")
    @classmethod
    def _capabilities(cls, value: str) -> str:
        parts = [p.strip() for p in value.split(",") if p.strip()]
        bad = [p for p in parts if not CAPABILITY.match(p)]
        if bad:
            raise ValueError(f"capabilities are comma-separated key:value pairs ({', '.join(bad)} is not)")
        profiles = [p.split(":", 1)[1] for p in parts if p.startswith("profile:")]
        if len(profiles) != 1 or profiles[0] not in PROFILES:
            raise ValueError("capabilities need exactly one of profile:control, profile:compute")
        return ",".join(parts)

    @property
    def profile(self) -> str:
        return next(p.split(":", 1)[1] for p in self.capabilities.split(",") if p.startswith("profile:"))

    @property
    def macs(self) -> tuple[str, ...]:
        return tuple(m.lower() for m in ((self.mac_address,) if isinstance(self.mac_address, str) else self.mac_address))


class _InventoryFile(_Strict):
    nodes: dict[str, Node] = Field(min_length=1)


@dataclass(frozen=True)
class Inventory:
    """The validated nodes (in file order) and where they came from."""

    path: Path
    nodes: dict[str, Node]

    def count(self, profile: str) -> int:
        return sum(1 for n in self.nodes.values() if n.profile == profile)

    def instackenv(self) -> str:
        """TripleO's node import file (``openstack overcloud node import``), deterministic JSON."""
        nodes = []
        for name, node in self.nodes.items():
            entry: dict[str, object] = {
                "name": name,
                "pm_type": node.pm_type,
                "pm_addr": str(node.ipmi_ip),
                "pm_user": node.ipmi_user,
                "pm_password": node.ipmi_pass,
                "mac": list(node.macs),
                "cpu": str(node.cpus),
                "memory": str(node.memory),
                "disk": str(node.disk),
                "arch": node.arch,
                "capabilities": node.capabilities,
            }
            if node.pm_port is not None:
                entry["pm_port"] = str(node.pm_port)
            nodes.append(entry)
        return json.dumps({"nodes": nodes}, indent=2, sort_keys=True) + "\n"


def _inventory_checks(data: _InventoryFile) -> list[str]:
    problems = []
    seen: dict[str, str] = {}
    for name, node in data.nodes.items():
        for mac in node.macs:
            if mac in seen:
                problems.append(f"nodes.{name}.mac_address: {mac!r}: already the MAC of node {seen[mac]}")
            seen.setdefault(mac, name)
    return problems


def load_inventory(path: Path) -> Inventory:
    """Read and validate an Apex inventory file (every problem at once, naming file, key and value)."""
    data = validate_model(_InventoryFile, _read_yaml(path, "inventory"), path, _inventory_checks)
    return Inventory(path, dict(data.nodes))


@dataclass(frozen=True)
class Scale:
    """How many controllers and computes the deploy asks for."""

    control: int
    compute: int


HA_CONTROLLERS = 3


def scale_of(inventory: Inventory, ha: bool) -> Scale:
    """Controllers: with HA every control node (at least 3), else 1 (as Apex); computes: every compute node."""
    controllers = inventory.count("control")
    if ha and controllers < HA_CONTROLLERS:
        raise SettingsError(
            f"{inventory.path}: HA needs {HA_CONTROLLERS} nodes with profile:control, the inventory has {controllers}",
            "add control nodes to the inventory (the bundled one for HA is inventory_file: virtual-ha), "
            "or set global_params.ha_enabled: false",
        )
    if controllers < 1:
        raise SettingsError(f"{inventory.path}: no node has profile:control",
                            "give one node capabilities: profile:control")
    return Scale(controllers if ha else 1, inventory.count("compute"))
