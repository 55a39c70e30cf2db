"""Reading TripleO's own release data: tripleo-common's container-images template and prepare
defaults, and tripleo-heat-templates' parameters, default roles, resource registry and the
environment files Apex scenarios add.

``scripts/update-catalog`` calls these on unpacked sdists to write ``build/tripleo/<release>/``;
``catalog.tht.heat_templates_from_dir`` calls them on an installed tree (an undercloud's
``/usr/share/openstack-tripleo-heat-templates``). Everything returned is plain data (sorted
lists and dicts) so that the written YAML is the same bytes for the same sources.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from apex_tools.core.errors import SettingsError
from apex_tools.core.resources import load_yaml

SERVICE_PREFIX = "OS::TripleO::Services::"
HEAT_NONE = "OS::Heat::None"
# The template's neutron_driver values (tripleo-common sets it from the deployed services).
NEUTRON_DRIVERS = ("odl", "other", "ovn")
# Template files, newest name first: train ships both and its prepare reads tripleo_containers.
TEMPLATES = ("container-images/tripleo_containers.yaml.j2", "container-images/overcloud_containers.yaml.j2")
PREPARE_DEFAULTS = "container-images/container_image_prepare_defaults.yaml"
# Before container_image_prepare_defaults.yaml (queens) the defaults sat in this module.
PREPARE_DEFAULTS_CODE = "tripleo_common/image/kolla_builder.py"
DEFAULT_REGISTRY = "overcloud-resource-registry-puppet.j2.yaml"
DEFAULT_ROLES = ("Controller", "Compute")

# What a scenario adds, each as candidates: the first one the release has is used.
SCENARIO_ENVIRONMENTS: dict[str, tuple[str, ...]] = {
    "containers": ("environments/docker.yaml",),
    "ha": ("environments/docker-ha.yaml",),
    "opendaylight": ("environments/services-docker/neutron-opendaylight.yaml",
                     "environments/services/neutron-opendaylight.yaml"),
    "ovn": ("environments/services-docker/neutron-ovn-ha.yaml", "environments/services/neutron-ovn-ha.yaml"),
    # Since stein THT's default is OVN; an Apex "nosdn" scenario is ML2/OVS.
    "ovs": ("environments/services/neutron-ovs.yaml",),
    "ceph": ("environments/ceph-ansible/ceph-ansible.yaml", "environments/cephadm/cephadm.yaml"),
}

_IMAGE = re.compile(r"^@namespace@/@name_prefix@(?P<name>[A-Za-z0-9._-]+)@name_suffix@:@tag@$")
_OTHER_IMAGE = re.compile(r"^@(?P<var>[a-z0-9_]+)_namespace@/@[a-z0-9_]+_image@:@[a-z0-9_]+_tag@$")
_TOP_KEY = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*):")
_PARAMETER = re.compile(r"^  ([A-Za-z_][A-Za-z0-9_]*):")
_REGISTRY_LINE = re.compile(r"^\s+OS::TripleO::Services::([A-Za-z0-9_]+):\s*(\S+)\s*$")
_CODE_DEFAULT = re.compile(r"""['"](ceph_namespace|ceph_image|ceph_tag)['"]\s*:\s*['"]([^'"]+)['"]""")


def _named_undefined() -> type:
    """jinja2's Undefined rendering as ``@name@``, so image names keep their variable parts.

    jinja2 is imported here: only generating the catalog renders templates, not a run reading it.
    """
    import jinja2

    class _Named(jinja2.Undefined):
        def __str__(self) -> str:
            return f"@{self._undefined_name}@"

    return _Named


def _short(service: str) -> str:
    return service.removeprefix(SERVICE_PREFIX)


def _render(text: str, neutron_driver: str, source: str, folder: Path | None) -> list[dict[str, Any]]:
    import jinja2

    # Newer templates include their Ceph part ('ceph.j2') from the same folder.
    loader = jinja2.FileSystemLoader(str(folder)) if folder else None
    env = jinja2.Environment(undefined=_named_undefined(), keep_trailing_newline=True, loader=loader)
    try:
        rendered = env.from_string(text).render(
            namespace="@namespace@", neutron_driver=neutron_driver, rhel_containers=False, logging="files")
        data = load_yaml(rendered)
    except (jinja2.TemplateError, yaml.YAMLError) as exc:
        raise SettingsError(f"{source}: cannot render: {exc}", "is this tripleo-common's container-images template?") from None
    entries = (data or {}).get("container_images_template")
    if not isinstance(entries, list):
        raise SettingsError(f"{source}: no container_images_template list", "is this tripleo-common's template?")
    return entries


def container_images(text: str, source: str = "container-images template", folder: Path | None = None) -> dict[str, Any]:
    """Image name → ``{parameters, services[, neutron_driver]}`` and the Ceph-side images.

    The template is rendered once per ``neutron_driver``; an image present under only some of
    them records those. Entries without parameters or services (base images) are left out.
    """
    images: dict[str, dict[str, Any]] = {}
    others: dict[str, dict[str, Any]] = {}
    drivers: dict[str, set[str]] = {}
    for driver in NEUTRON_DRIVERS:
        for entry in _render(text, driver, source, folder):
            params = sorted(entry.get("params") or ())
            services = sorted({_short(s) for s in entry.get("services") or ()})
            if not params or not services:
                continue
            imagename = str(entry.get("imagename", ""))
            found = _IMAGE.match(imagename)
            other = _OTHER_IMAGE.match(imagename)
            if found:
                name, table = found["name"], images
            elif other:
                name, table = other["var"], others
            else:
                continue  # images of other variables (the undercloud upgrade's *_stein ones)
            known = table.setdefault(name, {"parameters": set(), "services": set()})
            known["parameters"].update(params)
            known["services"].update(services)
            drivers.setdefault(name, set()).add(driver)
    out_images = {}
    for name, entry in sorted(images.items()):
        item: dict[str, Any] = {"parameters": sorted(entry["parameters"]), "services": sorted(entry["services"])}
        if drivers[name] != set(NEUTRON_DRIVERS):
            item["neutron_driver"] = sorted(drivers[name])
        out_images[name] = item
    out_others = {n: {"parameters": sorted(e["parameters"]), "services": sorted(e["services"])}
                  for n, e in sorted(others.items())}
    return {"images": out_images, "ceph_images": out_others}


def ceph_defaults_from_yaml(text: str) -> dict[str, str]:
    """``ceph_namespace``/``ceph_image``/``ceph_tag`` of container_image_prepare_defaults.yaml."""
    data = load_yaml(text) or {}
    prepare = (data.get("parameter_defaults") or {}).get("ContainerImagePrepare") or []
    values = (prepare[0].get("set") or {}) if prepare else {}
    return _ceph_triple({k: str(v) for k, v in values.items()}, PREPARE_DEFAULTS)


def ceph_defaults_from_code(text: str) -> dict[str, str]:
    """The same three from the defaults dict of queens' kolla_builder.py."""
    return _ceph_triple(dict(_CODE_DEFAULT.findall(text)), PREPARE_DEFAULTS_CODE)


def _ceph_triple(values: dict[str, str], source: str) -> dict[str, str]:
    missing = [k for k in ("ceph_namespace", "ceph_image", "ceph_tag") if k not in values]
    if missing:
        raise SettingsError(f"{source}: no {', '.join(missing)}", "is this tripleo-common's prepare defaults?")
    return {k.removeprefix("ceph_"): values[k] for k in ("ceph_namespace", "ceph_image", "ceph_tag")}


def read_tripleo_common(root: Path) -> dict[str, Any]:
    """The container-images facts of an unpacked tripleo-common tree."""
    template = next((root / t for t in TEMPLATES if (root / t).is_file()), None)
    if template is None:
        raise SettingsError(f"{root}: none of {', '.join(TEMPLATES)}", "is this a tripleo-common source tree?")
    data = container_images(template.read_text(), str(template), template.parent)
    defaults = root / PREPARE_DEFAULTS
    if defaults.is_file():
        data["ceph_defaults"] = ceph_defaults_from_yaml(defaults.read_text())
        data["sources"] = [template.relative_to(root).as_posix(), PREPARE_DEFAULTS]
    else:
        data["ceph_defaults"] = ceph_defaults_from_code((root / PREPARE_DEFAULTS_CODE).read_text())
        data["sources"] = [template.relative_to(root).as_posix(), PREPARE_DEFAULTS_CODE]
    return data


# --- tripleo-heat-templates -------------------------------------------------------------------

def declared_parameters(text: str) -> set[str]:
    """Names under a template's top-level ``parameters:`` (line-based: .j2.yaml files are not YAML
    before rendering; names made of Jinja expressions are skipped)."""
    names: set[str] = set()
    inside = False
    for line in text.splitlines():
        top = _TOP_KEY.match(line)
        if top:
            inside = top[1] == "parameters"
            continue
        if inside:
            found = _PARAMETER.match(line)
            if found:
                names.add(found[1])
    return names


def _is_template(text: str) -> bool:
    return any(line.startswith("heat_template_version:") for line in text.splitlines())


def template_files(root: Path) -> list[Path]:
    """Every ``*.yaml`` under ``root`` outside tests, CI jobs, release notes and the sample tools."""
    skip = {"ci", "releasenotes", "tools", "sample-env-generator", "zuul.d", "tripleo_heat_templates",
            "plan-samples", ".tox"}
    return sorted(p for p in root.rglob("*.yaml")
                  if p.is_file() and not (set(p.relative_to(root).parts[:-1]) & skip))


def parameters_of(root: Path) -> list[str]:
    """Every parameter name any Heat template of the tree declares, sorted."""
    names: set[str] = set()
    for path in template_files(root):
        text = path.read_text(errors="replace")
        if _is_template(text):
            names |= declared_parameters(text)
    return sorted(names)


def environments_of(root: Path) -> list[str]:
    """Environment files (relative paths), with ``x.j2.yaml`` also as the ``x.yaml`` the plan renders."""
    found: set[str] = set()
    folder = root / "environments"
    for path in folder.rglob("*.yaml") if folder.is_dir() else ():
        rel = path.relative_to(root).as_posix()
        found.add(rel)
        if rel.endswith(".j2.yaml") and ".role." not in rel:
            found.add(rel.removesuffix(".j2.yaml") + ".yaml")
    return sorted(found)


def role_services(root: Path, roles: tuple[str, ...] = DEFAULT_ROLES) -> dict[str, list[str]]:
    """Role → its ``ServicesDefault`` (short names) from the default ``roles_data.yaml``."""
    path = root / "roles_data.yaml"
    try:
        data = load_yaml(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SettingsError(f"{path}: cannot read: {exc}", "is this a tripleo-heat-templates tree?") from None
    by_name = {r.get("name"): r for r in data or () if isinstance(r, dict)}
    missing = [r for r in roles if r not in by_name]
    if missing:
        raise SettingsError(f"{path}: no role {', '.join(missing)}", "the default roles_data.yaml has them")
    return {r: sorted({_short(s) for s in by_name[r].get("ServicesDefault") or ()}) for r in roles}


def default_registry(root: Path) -> dict[str, str]:
    """Service (short name) → template of the default resource registry (line-based: it is Jinja)."""
    path = root / DEFAULT_REGISTRY
    try:
        text = path.read_text()
    except OSError as exc:
        raise SettingsError(f"{path}: cannot read: {exc.strerror}", "is this a tripleo-heat-templates tree?") from None
    registry: dict[str, str] = {}
    for line in text.splitlines():
        found = _REGISTRY_LINE.match(line)
        if found and "{" not in line:
            registry[found[1]] = found[2]
    return dict(sorted(registry.items()))


def environment_registry(root: Path, rel: str) -> dict[str, str]:
    """Service (short name) → template an environment file's ``resource_registry`` maps."""
    path = root / rel
    try:
        data = load_yaml(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SettingsError(f"{path}: cannot read: {exc}", "is this a tripleo-heat-templates tree?") from None
    registry = data.get("resource_registry") or {}
    return dict(sorted((_short(k), str(v)) for k, v in registry.items() if str(k).startswith(SERVICE_PREFIX)))


def scenario_environments(root: Path) -> dict[str, dict[str, str]]:
    """The resource registries of every scenario environment file the tree has."""
    out = {}
    for candidates in SCENARIO_ENVIRONMENTS.values():
        for rel in candidates:
            if (root / rel).is_file():
                out[rel] = environment_registry(root, rel)
    return dict(sorted(out.items()))


def templates_of(root: Path) -> list[str]:
    """Every template file (relative path) a resource registry may name, with ``x.j2.yaml`` also
    as the ``x.yaml`` the plan renders."""
    found: set[str] = set()
    for path in template_files(root):
        rel = path.relative_to(root).as_posix()
        found.add(rel)
        if rel.endswith(".j2.yaml"):
            found.add(rel.removesuffix(".j2.yaml") + ".yaml")
    return sorted(found)


def environment_templates(root: Path) -> dict[str, dict[str, str]]:
    """Environment file → the template files its ``resource_registry`` maps (type → path as written,
    relative to the environment's folder); files without any are left out."""
    out: dict[str, dict[str, str]] = {}
    folder = root / "environments"
    for path in sorted(folder.rglob("*.yaml")) if folder.is_dir() else ():
        if path.name.endswith(".j2.yaml"):
            continue
        try:
            data = load_yaml(path.read_text())
        except (OSError, yaml.YAMLError):
            continue
        registry = data.get("resource_registry") if isinstance(data, dict) else None
        files = {str(k): str(v) for k, v in (registry or {}).items()
                 if isinstance(v, str) and v.endswith(".yaml")} if isinstance(registry, dict) else {}
        if files:
            out[path.relative_to(root).as_posix()] = dict(sorted(files.items()))
    return out


def read_heat_templates(root: Path) -> dict[str, Any]:
    """The facts of an unpacked or installed tripleo-heat-templates tree."""
    if not (root / "roles_data.yaml").is_file():
        raise SettingsError(f"{root}: no roles_data.yaml", "give the root of a tripleo-heat-templates tree")
    return {
        "parameters": parameters_of(root),
        "environments": environments_of(root),
        "roles": role_services(root),
        "resource_registry": default_registry(root),
        "scenario_environments": scenario_environments(root),
        "templates": templates_of(root),
        "environment_templates": environment_templates(root),
    }
