"""Apex-format settings files: deploy settings, network settings and the common patches file.

Each loader reads YAML, validates it into typed, frozen objects and reports every problem
at once, each naming the file, the key path, the bad value and what is allowed.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar, get_origin

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from apex_tools.core import yamlfile
from apex_tools.core.errors import SettingsError
from apex_tools.core.render_safety import shown

OS_VERSIONS = ("queens", "rocky", "stein", "train", "ussuri", "victoria", "wallaby", "master")
ODL_VERSIONS = ("carbon", "nitrogen", "oxygen", "fluorine", "neon", "master")
CHANGE_ID = re.compile(r"^I[0-9a-f]{40}$")


def short_name(project: str) -> str:
    """A Gerrit project's last component: ``openstack/nova`` → ``nova``."""
    return project.rstrip("/").rsplit("/", 1)[-1]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True, populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _null_is_empty(cls, data: Any) -> Any:
        """A key written with no value (YAML null) means empty for lists and the default for
        sections (``overcloud:`` alone), as Apex's own loader read them."""
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for name, info in cls.model_fields.items():
            for key in {name, info.alias or name}:
                if key not in out or out[key] is not None:
                    continue
                if get_origin(info.annotation) is tuple:
                    out[key] = ()
                elif isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel) \
                        and not info.is_required():
                    del out[key]
        return out


# What a list key holds, for "expected a list of …" (pydantic would say "a valid tuple").
LIST_ITEMS = {
    "overcloud": "patches ({change-id, project, branch})",
    "undercloud": "patches ({change-id, project, branch})",
    "members": "NIC names",
    "ntp": "NTP servers",
    "dns_nameservers": "DNS servers",
    "dhcp_range": "two addresses (first, last)",
    "introspection_range": "two addresses (first, last)",
}


class Patch(_Strict):
    """A Gerrit change to apply: ``{change-id, project, branch?}``."""

    change_id: str = Field(alias="change-id")
    # Both reach Gerrit URLs, cache file names and Dockerfile labels: names, not text.
    project: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")
    branch: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")

    @field_validator("change_id")
    @classmethod
    def _change_id(cls, value: str) -> str:
        if not CHANGE_ID.match(value):
            raise ValueError("a Gerrit Change-Id is 'I' followed by 40 lowercase hex digits")
        return value


class PatchSet(_Strict):
    undercloud: tuple[Patch, ...] = ()
    overcloud: tuple[Patch, ...] = ()


class GlobalParams(_Strict):
    ha_enabled: bool
    introspect: bool = True
    ipxe: bool = True
    patches: PatchSet = PatchSet()


class DeployOptions(_Strict):
    """``deploy_options``. ``ceph_device`` stays ``None`` when unset (Apex's sentinel bug)."""

    # apex-tools exists to deploy containerized overclouds, so containers default to on.
    containers: bool = True
    os_version: Literal[OS_VERSIONS] = "master"  # type: ignore[valid-type]
    sdn_controller: Literal["opendaylight", "ovn", False] = False
    odl_version: Literal[ODL_VERSIONS] = "oxygen"  # type: ignore[valid-type]
    ceph: bool = True
    ceph_device: str | None = Field(default=None, pattern=r"^/dev/\S+$")
    dataplane: Literal["ovs", "ovs_dpdk", "fdio"] = "ovs"
    vim: Literal["openstack", "k8s"] = "openstack"
    # Feature switches Apex scenarios carry; accepted so real scenario files load.
    tacker: bool = False
    congress: bool = False
    sfc: bool = False
    vpn: bool = False
    vpp: bool = False
    gluon: bool = False
    rt_kvm: bool = False
    l2gw: bool = False
    dvr: bool = False
    barometer: bool = False
    calipso: bool = False
    yardstick: bool = False
    dovetail: bool = False
    vsperf: bool = False
    odl_vpp_routing_node: str | None = None
    odl_vpp_netvirt: bool = False
    sriov: Literal[False] | str = False
    performance: dict[str, Any] | None = None

    @field_validator("sriov", mode="before")
    @classmethod
    def _sriov(cls, value: Any) -> Any:
        if value is True or value == "" or not isinstance(value, (bool, str)):
            raise ValueError("sriov takes a NIC name such as 'em2', or false")
        return value


class DeploySettings(_Strict):
    global_params: GlobalParams
    deploy_options: DeployOptions = DeployOptions()

    @property
    def os_version(self) -> str:
        return self.deploy_options.os_version


class InstallerVm(_Strict):
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    nic_type: str | None = None
    members: tuple[str, ...] = ()
    vlan: str | int | None = None


class AdminNetwork(_Strict):
    enabled: bool = True
    installer_vm: InstallerVm
    cidr: ipaddress.IPv4Network | ipaddress.IPv6Network
    gateway: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    dhcp_range: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ipaddress.IPv4Address | ipaddress.IPv6Address]
    introspection_range: tuple[
        ipaddress.IPv4Address | ipaddress.IPv6Address, ipaddress.IPv4Address | ipaddress.IPv6Address
    ]
    nic_mapping: dict[str, Any] | None = None


class Networks(_Strict):
    admin: AdminNetwork
    # Networks other targets do not read yet; kept so Apex network files load.
    tenant: dict[str, Any] | None = None
    external: list[Any] | dict[str, Any] | None = None
    storage: dict[str, Any] | None = None
    api: dict[str, Any] | None = None


class NetworkSettings(_Strict):
    networks: Networks
    ntp: tuple[str, ...] = ("pool.ntp.org",)
    dns_nameservers: tuple[str, ...] = ("8.8.8.8",)
    domain_name: str = Field(default="opnfvlf.org", validation_alias=AliasChoices("domain_name", "dns-domain"))
    syslog: dict[str, Any] | None = None
    apex: dict[str, Any] | None = None

    @property
    def admin(self) -> AdminNetwork:
        return self.networks.admin


class PatchesFile(_Strict):
    """The common patches file, keyed by OpenStack version."""

    patches: dict[Literal[OS_VERSIONS], PatchSet]  # type: ignore[valid-type]

    @field_validator("patches", mode="before")
    @classmethod
    def _null_versions(cls, value: Any) -> Any:
        # `queens:` with nothing after it: no patches for queens.
        return {k: ({} if v is None else v) for k, v in value.items()} if isinstance(value, dict) else value

    def for_version(self, os_version: str) -> PatchSet:
        return self.patches.get(os_version, PatchSet())


M = TypeVar("M", bound=BaseModel)


def _read_yaml(path: Path, what: str) -> Any:
    # Bounded, regular, UTF-8, no aliases, no duplicate keys, a mapping (core/yamlfile.py).
    return yamlfile.load_mapping(path, what)


def _field_names(model: type[BaseModel]) -> list[str]:
    return sorted(f.alias or name for name, f in model.model_fields.items())


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class that holds the key at ``loc`` (for listing allowed keys)."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int) or not (isinstance(current, type) and issubclass(current, BaseModel)):
            continue
        field = next((f for n, f in current.model_fields.items() if part in (n, f.alias)), None)
        if field is None:
            continue  # a key of a dict of models (an inventory's node name): the model stays
        current = _inner_model(field.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _inner_model(annotation: Any) -> Any:
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _inner_model(arg)
        if found is not None:
            return found
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _value_at(data: Any, loc: tuple[Any, ...]) -> Any:
    for part in loc:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _describe(model: type[BaseModel], data: Any, err: dict[str, Any]) -> str:
    # Drop pydantic's union branch labels ("str", "literal['x']", "function-after[...]") from paths.
    loc = tuple(p for p in err["loc"] if isinstance(p, int) or not (("[" in p) or p in ("str", "int", "bool", "dict")))
    path = ".".join(str(p) for p in loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        holder = _model_at(model, loc)
        allowed = f" (allowed: {', '.join(_field_names(holder))})" if holder else ""
        return f"{path}: unknown key{allowed}"
    if err["type"] == "missing":
        return f"{path}: required key is missing"
    value = _value_at(data, loc)
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] in ("tuple_type", "list_type"):
        key = next((p for p in reversed(loc) if isinstance(p, str)), "")
        msg = f"expected a list of {LIST_ITEMS[key]}" if key in LIST_ITEMS else "expected a list"
    elif err["type"] in ("dict_type", "model_type", "model_attributes_type"):
        msg = "expected a mapping (key: value lines)"
    key = next((p for p in reversed(loc) if isinstance(p, str)), None)
    return f"{path}: {shown(key, value)}: {msg}"


def validate_model(model: type[M], data: Any, path: Path, checks: Callable[[M], list[str]] | None = None) -> M:
    """``data`` (read from ``path``) as ``model``, or one SettingsError listing every problem with
    the key path, the value (secrets masked, long values cut) and what is allowed."""
    try:
        result = model.model_validate(data)
    except ValidationError as exc:
        seen: dict[str, None] = {}
        for err in exc.errors():
            seen.setdefault(_describe(model, data, err))
        problems = list(seen)
    else:
        problems = checks(result) if checks else []
        if not problems:
            return result
    raise SettingsError(
        f"{path}: {len(problems)} problem{'s' if len(problems) > 1 else ''}:\n  "
        + "\n  ".join(f"{path}: {p}" for p in problems),
        "fix the keys named above; the bundled files under config/ are examples",
    )


def _deploy_checks(ds: DeploySettings) -> list[str]:
    opts = ds.deploy_options
    problems = []
    if opts.gluon and not opts.vpn:
        problems.append("deploy_options.gluon: True: gluon requires deploy_options.vpn: true")
    if opts.sdn_controller != "opendaylight" and opts.odl_version != "oxygen" and "odl_version" in opts.model_fields_set:
        problems.append(
            f"deploy_options.odl_version: {opts.odl_version!r}: only used with sdn_controller: opendaylight"
        )
    if opts.ceph_device and not opts.ceph:
        problems.append(f"deploy_options.ceph_device: {opts.ceph_device!r}: set but deploy_options.ceph is false")
    return problems


def _network_checks(ns: NetworkSettings) -> list[str]:
    admin = ns.admin
    problems = []

    def inside(name: str, addr: Any) -> None:
        if addr not in admin.cidr:
            problems.append(f"networks.admin.{name}: '{addr}': not inside networks.admin.cidr {admin.cidr}")

    inside("installer_vm.ip", admin.installer_vm.ip)
    for name in ("dhcp_range", "introspection_range"):
        start, end = getattr(admin, name)
        inside(f"{name}[0]", start)
        inside(f"{name}[1]", end)
        if start > end:
            problems.append(f"networks.admin.{name}: ['{start}', '{end}']: start is after end")
        elif start <= admin.installer_vm.ip <= end:
            problems.append(
                f"networks.admin.{name}: ['{start}', '{end}']: contains installer_vm.ip {admin.installer_vm.ip}"
            )
    (d0, d1), (i0, i1) = admin.dhcp_range, admin.introspection_range
    if d0 <= i1 and i0 <= d1:
        problems.append(
            f"networks.admin.introspection_range: ['{i0}', '{i1}']: overlaps dhcp_range ['{d0}', '{d1}']"
        )
    return problems


def load_deploy_settings(path: Path) -> DeploySettings:
    """Read and validate an Apex deploy settings file."""
    return validate_model(DeploySettings, _read_yaml(path, "deploy settings"), path, _deploy_checks)


def load_network_settings(path: Path) -> NetworkSettings:
    """Read and validate an Apex network settings file."""
    return validate_model(NetworkSettings, _read_yaml(path, "network settings"), path, _network_checks)


def load_patches_file(path: Path) -> PatchesFile:
    """Read and validate the common patches file (``patches: {<os_version>: {undercloud, overcloud}}``)."""
    return validate_model(PatchesFile, _read_yaml(path, "patches"), path)


def merged_patches(ds: DeploySettings, common: PatchesFile) -> PatchSet:
    """The deploy settings' patches followed by the common ones for its version, duplicates dropped."""

    def merge(own: tuple[Patch, ...], extra: tuple[Patch, ...]) -> tuple[Patch, ...]:
        return tuple(dict.fromkeys(own + extra))

    shared = common.for_version(ds.os_version)
    return PatchSet(
        undercloud=merge(ds.global_params.patches.undercloud, shared.undercloud),
        overcloud=merge(ds.global_params.patches.overcloud, shared.overcloud),
    )
