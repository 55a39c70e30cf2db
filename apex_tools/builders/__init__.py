"""Engine builders as small drivers: one ``Builder`` interface, a Docker SDK and a buildah driver."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from apex_tools.builders.base import Builder
from apex_tools.core.errors import SettingsError
from apex_tools.registry.auth import Credentials

__all__ = ["Builder", "get_builder", "BUILDERS", "ENGINES"]

ENGINES = ("docker", "buildah")
# ``native`` is not a Builder: it needs no engine (registry/native.py, chosen in registry/rebuild.py).
BUILDERS = ("native", *ENGINES)


def get_builder(name: str, insecure_registries: Sequence[str] = (),
                credentials: Mapping[str, Credentials] | None = None) -> Builder:
    """The builder called ``name`` (config ``builder``); an error lists the valid names.

    ``credentials`` (registry host → user and password) are used for the pulls and pushes there.
    """
    if name == "docker":
        from apex_tools.builders.docker_sdk import DockerBuilder

        return DockerBuilder(credentials=credentials)
    if name == "buildah":
        from apex_tools.builders.buildah import BuildahBuilder

        return BuildahBuilder(insecure_registries, credentials)
    raise SettingsError(f"unknown builder {name!r}", f"set builder to one of: {', '.join(sorted(BUILDERS))}")
