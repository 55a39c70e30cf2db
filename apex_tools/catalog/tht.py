"""What a release's tripleo-heat-templates declare: parameter names, environment files, the
default roles' services and resource registries. From the bundled data
(``build/tripleo/<release>/heat.yaml``) or read from an installed tree (an undercloud's
``/usr/share/openstack-tripleo-heat-templates``) with the generator's own parser.

    heat = heat_templates("train")
    heat.has_parameter("ContainerNovaApiImage")          # True
    heat.has_environment("environments/docker-ha.yaml")  # True
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any


from apex_tools.catalog import tripleo
from apex_tools.core.errors import SettingsError
from apex_tools.core.resources import data_path
from apex_tools.core.settings import OS_VERSIONS, DeploySettings


@dataclass(frozen=True)
class HeatTemplates:
    """One release's tripleo-heat-templates, as far as the deploy and the image choice need them."""

    release: str
    parameters: frozenset[str]  # every parameter name THT's templates of that release declare
    environments: frozenset[str]  # environment file paths relative to the THT root, e.g. "environments/docker.yaml"
    roles: dict[str, tuple[str, ...]] = field(default_factory=dict, compare=False)  # Controller/Compute services
    resource_registry: dict[str, str] = field(default_factory=dict, compare=False)  # service → default template
    # scenario environment file → its resource_registry (services only)
    scenario_environments: dict[str, dict[str, str]] = field(default_factory=dict, compare=False)
    source: str = field(default="", compare=False)  # "tripleo-heat-templates 11.6.0" or the tree read
    templates: frozenset[str] = field(default=frozenset(), compare=False)  # every template file (relative)
    # environment file → resource type → template file as written (relative to the environment's folder)
    environment_templates: dict[str, dict[str, str]] = field(default_factory=dict, compare=False)

    def has_parameter(self, name: str) -> bool:
        return name in self.parameters

    def has_environment(self, path: str) -> bool:
        return path.removeprefix("./") in self.environments

    def missing_templates(self, environment: str) -> list[tuple[str, str]]:
        """(resource type, template as written) of ``environment``'s registry that the release does not ship."""
        folder = posixpath.dirname(environment.removeprefix("./"))
        return [(kind, template) for kind, template in self.environment_templates.get(environment, {}).items()
                if posixpath.normpath(posixpath.join(folder, template)) not in self.templates]


def _from_data(release: str, data: dict[str, Any], source: str) -> HeatTemplates:
    return HeatTemplates(
        release=release,
        parameters=frozenset(data["parameters"]),
        environments=frozenset(data["environments"]),
        roles={r: tuple(s) for r, s in data["roles"].items()},
        resource_registry=dict(data["resource_registry"]),
        scenario_environments={e: dict(r) for e, r in data["scenario_environments"].items()},
        source=source,
        templates=frozenset(data.get("templates", ())),
        environment_templates={e: dict(r) for e, r in data.get("environment_templates", {}).items()},
    )


@lru_cache(maxsize=None)
def heat_templates(os_version: str) -> HeatTemplates:
    """The bundled facts of ``os_version``'s tripleo-heat-templates."""
    if os_version not in OS_VERSIONS:
        raise SettingsError(f"OpenStack version {os_version!r} is unknown", f"use one of {', '.join(OS_VERSIONS)}")
    path = Path(data_path("build", "tripleo", os_version, "heat.yaml"))
    try:
        # Comment lines, then a JSON body (catalog/generate.py): parsed as JSON, not YAML.
        text = path.read_text()
        data = json.loads(text[text.index("\n{") + 1:] if not text.startswith("{") else text)
        return _from_data(os_version, data, f"{data['package']} {data['version']}")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SettingsError(f"{path}: cannot read: {exc}", "regenerate it with scripts/update-catalog") from None


def heat_templates_from_dir(root: Path, release: str) -> HeatTemplates:
    """The same facts read from an installed tree (e.g. ``/usr/share/openstack-tripleo-heat-templates``)."""
    return _from_data(release, tripleo.read_heat_templates(Path(root)), str(root))


def deprecated_only(registry: dict[str, str]) -> bool:
    """True when an environment's resource registry maps services only to THT's ``deprecated/`` templates."""
    return bool(registry) and all("/deprecated/" in template for template in registry.values())


def scenario_environments(ds: DeploySettings, heat: HeatTemplates) -> list[str]:
    """The THT environment files a scenario adds, in deploy order (containers, HA, SDN, Ceph):
    of each kind's candidates the first the release has. The image choice and the deploy command
    both take them from here, so the services deployed are the ones whose images are mirrored."""
    opts = ds.deploy_options
    wanted = []
    if opts.containers:
        wanted.append(("containers", False))
    if ds.global_params.ha_enabled:
        wanted.append(("ha", True))
    sdn = opts.sdn_controller or None
    wanted.append((sdn or "ovs", sdn is not None))
    if opts.ceph:
        wanted.append(("ceph", True))
    chosen = []
    for key, required in wanted:
        candidates = tripleo.SCENARIO_ENVIRONMENTS[key]
        if key == "containers":
            # Since stein containers are the default (podman); docker.yaml then only enables the
            # deprecated Docker service, which train's client stops at a confirmation prompt for.
            candidates = tuple(c for c in candidates if not deprecated_only(heat.scenario_environments.get(c, {})))
        found = next((c for c in candidates if heat.has_environment(c)), None)
        if found:
            chosen.append(found)
        elif required:
            raise SettingsError(
                f"{key}: {heat.release}'s tripleo-heat-templates ({heat.source or 'as given'}) have none of "
                f"{', '.join(candidates)}",
                f"{heat.release} cannot deploy this scenario; pick another os_version or scenario",
            )
    return chosen
