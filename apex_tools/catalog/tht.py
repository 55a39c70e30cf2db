"""STAND-IN for the catalog issue's (issue 13) module: tripleo-heat-templates facts per release.

The deploy issue codes against this interface only; at merge the catalog issue's version of
this file replaces this one (the dataclass and the two functions keep these signatures).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from apex_tools.core.errors import NotBuiltError


@dataclass(frozen=True)
class HeatTemplates:
    """What one release of tripleo-heat-templates holds: parameter names and environment files."""

    release: str
    parameters: frozenset[str]
    environments: frozenset[str]

    def has_parameter(self, name: str) -> bool:
        """True when some template of the release declares parameter ``name``."""
        return name in self.parameters

    def has_environment(self, path: str) -> bool:
        """True when the release ships ``path`` (relative to the THT root, e.g. ``environments/docker.yaml``)."""
        return path in self.environments


def heat_templates(os_version: str) -> HeatTemplates:
    """The bundled facts of ``os_version``'s tripleo-heat-templates (the catalog issue's data)."""
    raise NotBuiltError(
        f"the bundled tripleo-heat-templates facts for {os_version} are not built yet (catalog issue)",
        "wait for the catalog issue to land, or deploy from an undercloud that has "
        "/usr/share/openstack-tripleo-heat-templates",
    )


def heat_templates_from_dir(root: Path, release: str) -> HeatTemplates:
    """The facts of an installed tripleo-heat-templates tree at ``root`` (the catalog issue's reader)."""
    raise NotBuiltError(
        f"reading tripleo-heat-templates at {root} is not built yet (catalog issue)",
        "wait for the catalog issue to land",
    )
