"""The images a deployment runs, chosen by its services the way ``openstack tripleo container
image prepare`` chooses them, from TripleO's own per-release data (``build/tripleo/<release>/``,
written by ``scripts/update-catalog``) plus our hand-written image → project table
(``build/image-projects.yaml``).

Public API::

    cat = load_catalog("train")
    cat.images_for_project("openstack/nova")   # ["nova-api", "nova-compute", ...] (exact, sorted)
    cat.environments(deploy_settings)          # THT environment files the scenario adds
    cat.enabled_services(deploy_settings)      # service → why it is on (role, environment file)
    cat.deployment_images(deploy_settings)     # [CatalogImage, ...]: images with an enabled service
    cat.ceph_image(deploy_settings)            # CephImage or None (Ceph not deployed)
    img.ref(registry, namespace, prefix, tag)  # ImageRef (namespace with {os_version} filled)
    img.parameters                             # ("ContainerNovaApiImage", ...): tripleo-common's ∩ THT's
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from apex_tools.catalog import tripleo
from apex_tools.catalog.tht import HeatTemplates, heat_templates, scenario_environments
from apex_tools.core.errors import SettingsError
from apex_tools.core.reference import ImageRef
from apex_tools.core.resources import data_path, load_yaml
from apex_tools.core.settings import OS_VERSIONS, DeploySettings, short_name

log = logging.getLogger(__name__)

PROJECTS_FILE = "image-projects.yaml"
# sdn_controller → tripleo-common's neutron_driver.
NEUTRON_DRIVER = {"opendaylight": "odl", "ovn": "ovn"}
SDN_OF_DRIVER = {"odl": "opendaylight", "ovn": "ovn"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class _ProjectEntry(_Strict):
    projects: tuple[str, ...]
    since: str | None = None
    until: str | None = None


class _OdlEntry(_Strict):
    shipped: dict[str, str]
    aliases: dict[str, str] = {}


class _ProjectsFile(_Strict):
    images: dict[str, _ProjectEntry]
    opendaylight: _OdlEntry


class _ImageData(_Strict):
    parameters: tuple[str, ...]
    services: tuple[str, ...]
    neutron_driver: tuple[str, ...] = tripleo.NEUTRON_DRIVERS


class _ImagesFile(_Strict):
    release: str
    package: str
    version: str
    ceph_defaults: dict[str, str]
    images: dict[str, _ImageData]
    ceph_images: dict[str, _ImageData]


@dataclass(frozen=True)
class CatalogImage:
    """One TripleO service image of an OpenStack version.

    ``services`` are the TripleO services that use it (short names); in a deployment's list
    only the enabled ones, the reason it is there.
    """

    name: str
    projects: tuple[str, ...]
    parameters: tuple[str, ...]
    services: tuple[str, ...] = ()
    sdn: str | None = None  # "opendaylight" / "ovn": only with that SDN (tripleo-common's neutron_driver)
    neutron_drivers: tuple[str, ...] = tripleo.NEUTRON_DRIVERS

    def repository(self, namespace: str, prefix: str) -> str:
        """``<namespace>/<prefix><name>`` (``namespace`` already expanded: ``RunContext.expand``)."""
        return f"{namespace}/{prefix}{self.name}"

    def ref(self, registry: str, namespace: str, prefix: str, tag: str) -> ImageRef:
        """``<registry>/<namespace>/<prefix><name>:<tag>`` as a parsed reference."""
        return ImageRef.parse(f"{registry}/{self.repository(namespace, prefix)}:{tag}")


@dataclass(frozen=True)
class CephImage:
    """The Ceph daemon image of an OpenStack version (tripleo-common's prepare defaults)."""

    registry: str
    repository: str
    tag: str
    parameters: tuple[str, ...]
    services: tuple[str, ...] = ()

    def ref(self, registry: str | None = None) -> ImageRef:
        """Its reference, on ``registry`` when given (a mirror), else on the release's registry."""
        return ImageRef.parse(f"{registry or self.registry}/{self.repository}:{self.tag}")

    def configured(self, registry: str = "", namespace: str = "", image: str = "", tag: str = "") -> CephImage:
        """This image with the non-empty ones of the ``upstream.ceph_registry``/``ceph.*`` settings."""
        base_namespace, _, base_image = self.repository.rpartition("/")
        return replace(self, registry=registry or self.registry,
                       repository=f"{namespace or base_namespace}/{image or base_image}", tag=tag or self.tag)


def split_namespace(namespace: str) -> tuple[str, str]:
    """``docker.io/ceph`` → (``docker.io``, ``ceph``): a first part with a dot, colon or ``localhost`` is a registry."""
    first, _, rest = namespace.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return first, rest
    return "docker.io", namespace


@dataclass(frozen=True)
class Catalog:
    """The catalog resolved for one OpenStack version."""

    os_version: str
    images: dict[str, CatalogImage]
    odl_shipped: str
    odl_aliases: dict[str, str]
    ceph: CephImage
    heat: HeatTemplates
    source: str = ""  # "tripleo-common 11.7.0"
    ceph_defaults: dict[str, str] = field(default_factory=dict)

    def image(self, name: str) -> CatalogImage:
        """The image called ``name``; a SettingsError listing the known ones otherwise."""
        try:
            return self.images[name]
        except KeyError:
            raise SettingsError(
                f"image {name!r} is not in the catalog for {self.os_version} ({self.source})",
                f"known images: {', '.join(sorted(self.images))}",
            ) from None

    def images_for_project(self, project: str) -> list[str]:
        """Exact names of the images carrying ``project``'s code (``openstack/`` prefix ignored), sorted."""
        short = short_name(project)
        return sorted(name for name, img in self.images.items() if short in img.projects)

    def environments(self, ds: DeploySettings) -> list[str]:
        """The THT environment files the scenario adds, in deploy order (containers, HA, SDN, Ceph)."""
        return scenario_environments(ds, self.heat)

    def enabled_services(self, ds: DeploySettings) -> dict[str, str]:
        """Service → why it is enabled: a default role's service that the default resource
        registry, overlaid by the scenario's environment files, does not map to OS::Heat::None."""
        registry = {s: (t, "") for s, t in self.heat.resource_registry.items()}
        for env in self.environments(ds):
            registry.update((s, (t, env)) for s, t in self.heat.scenario_environments[env].items())
        enabled: dict[str, str] = {}
        for role, services in sorted(self.heat.roles.items()):
            for service in services:
                template, env = registry.get(service, ("", ""))
                if template == tripleo.HEAT_NONE or service in enabled:
                    continue
                enabled[service] = f"role {role}" + (f", enabled by {env}" if env else "")
        return dict(sorted(enabled.items()))

    def neutron_driver(self, ds: DeploySettings) -> str:
        """tripleo-common's ``neutron_driver`` for the deployment: odl, ovn or other."""
        return NEUTRON_DRIVER.get(ds.deploy_options.sdn_controller or "", "other")

    def deployment_images(self, ds: DeploySettings) -> list[CatalogImage]:
        """The images whose services the deployment enables, for its neutron driver, sorted by
        name, each with only its enabled services; no Ceph (``ceph_image``). Debug-logged."""
        enabled = self.enabled_services(ds)
        driver = self.neutron_driver(ds)
        chosen = []
        for name, image in sorted(self.images.items()):
            services = tuple(s for s in image.services if s in enabled)
            if not services or driver not in image.neutron_drivers or not image.parameters:
                continue
            chosen.append(replace(image, services=services))
        log.debug("%s: %d images for %d enabled services (environments: %s)", self.os_version, len(chosen),
                  len(enabled), ", ".join(self.environments(ds)) or "none")
        for image in chosen:
            log.debug("image %s: services %s", image.name,
                      "; ".join(f"{s} ({enabled[s]})" for s in image.services))
        return chosen

    def ceph_image(self, ds: DeploySettings) -> CephImage | None:
        """The Ceph daemon image when the deployment uses Ceph and enables a Ceph service."""
        if not ds.deploy_options.ceph:
            return None
        enabled = self.enabled_services(ds)
        services = tuple(s for s in self.ceph.services if s in enabled)
        if not services:
            log.debug("ceph: no Ceph service enabled in %s; no Ceph image", self.os_version)
            return None
        log.debug("image %s: services %s", self.ceph.repository, "; ".join(f"{s} ({enabled[s]})" for s in services))
        return replace(self.ceph, services=services)

    def odl_release(self, odl_version: str) -> str:
        """The OpenDaylight release to install for ``odl_version`` (aliases resolved)."""
        return self.odl_aliases.get(odl_version, odl_version)


def _load_yaml(path: Path, model: type[BaseModel], hint: str) -> Any:
    try:
        raw = load_yaml(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SettingsError(f"catalog {path}: cannot read: {exc}", hint) from None
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise SettingsError(f"catalog {path}: {problems}", hint) from None


@lru_cache(maxsize=None)
def _projects(path: Path) -> _ProjectsFile:
    return _load_yaml(path, _ProjectsFile, f"fix {PROJECTS_FILE} (hand-written)")


@lru_cache(maxsize=None)
def _images(path: Path) -> _ImagesFile:
    return _load_yaml(path, _ImagesFile, "regenerate it with scripts/update-catalog")


def release_images(os_version: str) -> dict[str, Any]:
    """The generated ``images.yaml`` of a release, validated (names and ceph defaults)."""
    data = _images(Path(data_path("build", "tripleo", os_version, "images.yaml")))
    return {"images": dict(data.images), "ceph_images": dict(data.ceph_images), "ceph_defaults": data.ceph_defaults,
            "source": f"{data.package} {data.version}"}


def in_range(os_version: str, since: str | None, until: str | None) -> bool:
    index = OS_VERSIONS.index(os_version)
    return (OS_VERSIONS.index(since) if since else 0) <= index <= (
        OS_VERSIONS.index(until) if until else len(OS_VERSIONS))


def project_table(path: Path | None = None) -> _ProjectsFile:
    """The hand-written image → projects table (``build/image-projects.yaml``)."""
    return _projects(Path(path or data_path("build", PROJECTS_FILE)))


def load_catalog(os_version: str, projects_path: Path | None = None) -> Catalog:
    """The catalog of ``os_version``: TripleO's generated data and our project table."""
    if os_version not in OS_VERSIONS:
        raise SettingsError(f"OpenStack version {os_version!r} is unknown", f"use one of {', '.join(OS_VERSIONS)}")
    table = project_table(projects_path)
    data = _images(Path(data_path("build", "tripleo", os_version, "images.yaml")))
    heat = heat_templates(os_version)
    images = {}
    for name, entry in data.images.items():
        hand = table.images.get(name)
        projects = hand.projects if hand and in_range(os_version, hand.since, hand.until) else ()
        drivers = tuple(entry.neutron_driver)
        sdn = SDN_OF_DRIVER.get(drivers[0]) if len(drivers) == 1 else None
        images[name] = CatalogImage(
            name=name, projects=projects, services=entry.services, sdn=sdn, neutron_drivers=drivers,
            # Heat ignores a parameter no template declares: keep only THT's.
            parameters=tuple(p for p in entry.parameters if heat.has_parameter(p)),
        )
    ceph_entry = data.ceph_images.get("ceph")
    if ceph_entry is None:
        raise SettingsError(f"build/tripleo/{os_version}/images.yaml: no Ceph daemon image",
                            "regenerate it with scripts/update-catalog")
    registry, namespace = split_namespace(data.ceph_defaults["namespace"])
    ceph = CephImage(registry=registry, repository=f"{namespace}/{data.ceph_defaults['image']}",
                     tag=data.ceph_defaults["tag"], services=ceph_entry.services,
                     parameters=tuple(p for p in ceph_entry.parameters if heat.has_parameter(p)))
    return Catalog(
        os_version=os_version,
        images=images,
        odl_shipped=table.opendaylight.shipped.get(os_version, ""),
        odl_aliases=dict(table.opendaylight.aliases),
        ceph=ceph,
        heat=heat,
        source=f"{data.package} {data.version}",
        ceph_defaults=dict(data.ceph_defaults),
    )


# Config keys whose empty value means "the release's" Ceph image part.
CEPH_KEYS = ("upstream.ceph_registry", "ceph.namespace", "ceph.image", "ceph.tag")


def ceph_defaults_shown(os_version: str) -> dict[str, str]:
    """What ``upstream.ceph_registry``/``ceph.namespace``/``ceph.image``/``ceph.tag`` mean when
    empty, for ``os_version`` (``apex config`` shows these effective values)."""
    ceph = load_catalog(os_version).ceph
    namespace, _, image = ceph.repository.rpartition("/")
    return dict(zip(CEPH_KEYS, (ceph.registry, namespace, image, ceph.tag)))
