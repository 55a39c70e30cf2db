"""The service → image catalog (``build/catalog.yaml``): exact project → image lookups, the images a
deployment runs, and TripleO's image names and parameter names.

Public API::

    cat = load_catalog("master")
    cat.images_for_project("openstack/nova")   # ["nova-api", "nova-compute", ...] (exact, sorted)
    cat.deployment_images(deploy_settings)     # [CatalogImage, ...] incl. SDN images when set
    cat.ceph_image(deploy_settings)            # CephImage or None (ceph disabled)
    img.ref(registry, namespace, prefix, tag)  # ImageRef (namespace with {os_version} filled)
    img.parameters                             # ("ContainerNovaApiImage", ...)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from apex_tools.core.errors import SettingsError
from apex_tools.core.reference import ImageRef
from apex_tools.core.resources import data_path
from apex_tools.core.settings import OS_VERSIONS, DeploySettings, short_name

OsVersion = Literal[OS_VERSIONS]  # type: ignore[valid-type]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _ImageEntry(_Strict):
    projects: tuple[str, ...] = ()
    services: tuple[str, ...] = ()
    since: OsVersion | None = None  # type: ignore[valid-type]
    until: OsVersion | None = None  # type: ignore[valid-type]
    sdn: Literal["opendaylight", "ovn"] | None = None
    replaces: tuple[str, ...] = ()
    deployed: bool = True


class _OdlEntry(_Strict):
    shipped: dict[OsVersion, str]  # type: ignore[valid-type]
    aliases: dict[str, str] = {}


class _CephEntry(_Strict):
    registry: str
    namespace: str
    name: str
    services: tuple[str, ...]
    tags: dict[OsVersion, str]  # type: ignore[valid-type]


class _CatalogFile(_Strict):
    parameter_prefix: dict[Literal["Docker", "Container"], tuple[OsVersion, ...]]  # type: ignore[valid-type]
    images: dict[str, _ImageEntry]
    opendaylight: _OdlEntry
    ceph: _CephEntry

    @model_validator(mode="after")
    def _consistent(self) -> _CatalogFile:
        problems = []
        for name, entry in self.images.items():
            problems += [f"images.{name}.replaces: {r!r} is not an image" for r in entry.replaces if r not in self.images]
        covered = [v for versions in self.parameter_prefix.values() for v in versions]
        problems += [f"parameter_prefix: {v!r} is missing" for v in OS_VERSIONS if v not in covered]
        if problems:
            raise ValueError("; ".join(problems))
        return self


def _version_index(version: str | None, default: int) -> int:
    return OS_VERSIONS.index(version) if version else default


@dataclass(frozen=True)
class CatalogImage:
    """One TripleO service image of an OpenStack version."""

    name: str
    projects: tuple[str, ...]
    parameters: tuple[str, ...]
    sdn: str | None = None
    replaces: tuple[str, ...] = ()
    deployed: bool = True

    def repository(self, namespace: str, prefix: str) -> str:
        """``<namespace>/<prefix><name>`` (``namespace`` already expanded: ``RunContext.expand``)."""
        return f"{namespace}/{prefix}{self.name}"

    def ref(self, registry: str, namespace: str, prefix: str, tag: str) -> ImageRef:
        """``<registry>/<namespace>/<prefix><name>:<tag>`` as a parsed reference."""
        return ImageRef.parse(f"{registry}/{self.repository(namespace, prefix)}:{tag}")


@dataclass(frozen=True)
class CephImage:
    """The Ceph daemon image of an OpenStack version."""

    registry: str
    repository: str
    tag: str
    parameters: tuple[str, ...]

    def ref(self, registry: str | None = None) -> ImageRef:
        """Its reference, on ``registry`` when given (a mirror), else on the catalog's registry."""
        return ImageRef.parse(f"{registry or self.registry}/{self.repository}:{self.tag}")


@dataclass(frozen=True)
class Catalog:
    """The catalog resolved for one OpenStack version."""

    os_version: str
    images: dict[str, CatalogImage]
    odl_shipped: str
    odl_aliases: dict[str, str]
    ceph: CephImage

    def image(self, name: str) -> CatalogImage:
        """The image called ``name``; a SettingsError listing the known ones otherwise."""
        try:
            return self.images[name]
        except KeyError:
            raise SettingsError(
                f"image {name!r} is not in the catalog for {self.os_version}",
                f"known images: {', '.join(sorted(self.images))}; add it to build/catalog.yaml",
            ) from None

    def images_for_project(self, project: str) -> list[str]:
        """Exact names of the images carrying ``project``'s code (``openstack/`` prefix ignored), sorted."""
        short = short_name(project)
        return sorted(name for name, img in self.images.items() if short in img.projects)

    def deployment_images(self, ds: DeploySettings) -> list[CatalogImage]:
        """Every image the deployment runs (SDN images included when set), sorted by name; no Ceph."""
        sdn = ds.deploy_options.sdn_controller or None
        chosen = {n: i for n, i in self.images.items() if i.deployed and (i.sdn is None or i.sdn == sdn)}
        replaced = {r for img in chosen.values() if img.sdn for r in img.replaces}
        return [img for name, img in sorted(chosen.items()) if name not in replaced]

    def ceph_image(self, ds: DeploySettings) -> CephImage | None:
        """The Ceph daemon image when the deployment uses Ceph."""
        return self.ceph if ds.deploy_options.ceph else None

    def odl_release(self, odl_version: str) -> str:
        """The OpenDaylight release to install for ``odl_version`` (aliases resolved)."""
        return self.odl_aliases.get(odl_version, odl_version)


@lru_cache(maxsize=None)
def _read(path: Path) -> _CatalogFile:
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SettingsError(f"catalog {path}: cannot read: {exc}", "restore build/catalog.yaml") from None
    try:
        return _CatalogFile.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise SettingsError(f"catalog {path}: {problems}", "fix build/catalog.yaml") from None


def load_catalog(os_version: str, path: Path | None = None) -> Catalog:
    """The catalog (``build/catalog.yaml`` unless ``path``) resolved for ``os_version``."""
    if os_version not in OS_VERSIONS:
        raise SettingsError(f"OpenStack version {os_version!r} is unknown", f"use one of {', '.join(OS_VERSIONS)}")
    data = _read(Path(path or data_path("build", "catalog.yaml")))
    index = OS_VERSIONS.index(os_version)
    prefix = next(p for p, versions in data.parameter_prefix.items() if os_version in versions)
    images = {}
    for name, entry in data.images.items():
        if not _version_index(entry.since, 0) <= index <= _version_index(entry.until, len(OS_VERSIONS)):
            continue
        images[name] = CatalogImage(
            name=name,
            projects=entry.projects,
            parameters=tuple(f"{prefix}{s}Image" for s in entry.services),
            sdn=entry.sdn,
            replaces=entry.replaces,
            deployed=entry.deployed,
        )
    ceph = data.ceph
    return Catalog(
        os_version=os_version,
        images=images,
        odl_shipped=data.opendaylight.shipped[os_version],
        odl_aliases=dict(data.opendaylight.aliases),
        ceph=CephImage(
            registry=ceph.registry,
            repository=f"{ceph.namespace}/{ceph.name}",
            tag=ceph.tags[os_version],
            parameters=tuple(f"{prefix}{s}Image" for s in ceph.services),
        ),
    )
