"""The Docker engine through the Docker SDK, reading the build and push streams for errors.

docker-py reports a failed build step or push only inside its JSON stream, not as an
exception, so every line is checked here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from apex_tools.core.errors import RegistryError
from apex_tools.core.reference import ImageRef
from apex_tools.builders.base import Builder, EngineUnavailable, build_failure
from apex_tools.registry.auth import Credentials

log = logging.getLogger(__name__)


def _split(ref: str) -> tuple[str, str]:
    """``registry/repository`` and tag, as the engine's tag and push calls take them."""
    parsed = ImageRef.parse(ref)
    return parsed.name, parsed.tag or "latest"


def _hint(message: str, context: Path) -> str:
    if "HTTP response to HTTPS client" in message:
        return ("the engine refuses the plain-HTTP registry: list it under insecure-registries in "
                "/etc/docker/daemon.json (loopback is allowed by default), or set builder: buildah")
    return f"fix the Dockerfile or patches in {context}, then re-run"


class DockerBuilder(Builder):
    """Builds with the running engine (host network) and pushes with it."""

    name = "docker"

    def __init__(self, client: Any = None, credentials: Mapping[str, Credentials] | None = None) -> None:
        self._client = client
        self.credentials = dict(credentials or {})

    def _auth(self, registry: str) -> dict[str, str] | None:
        found = self.credentials.get(registry)
        return {"username": found.username, "password": found.password} if found else None

    @property
    def client(self) -> Any:
        if self._client is None:
            import docker

            try:
                self._client = docker.from_env(timeout=600)
                self._client.ping()
            except Exception as exc:  # noqa: BLE001 - the SDK raises several unrelated types
                raise EngineUnavailable(f"cannot reach the Docker engine: {exc}",
                                        "start the engine as scripts/setup.sh does (dockerd --bridge=none "
                                        "--iptables=false --ip-masq=false), or set DOCKER_HOST, or "
                                        "builder_fallback: buildah") from None
        return self._client

    def build(self, context: Path, tags: Sequence[str]) -> str:
        lines: list[str] = []
        image_id = ""
        for registry in self.credentials:
            # The build's base-image pulls: docker-py sends the client's auth configs with the build.
            self.client.api._auth_configs.add_auth(registry, {**(self._auth(registry) or {}),
                                                              "serveraddress": registry})
        stream = self.client.api.build(
            path=str(context), tag=tags[0], rm=True, forcerm=True, pull=True, network_mode="host", decode=True,
        )
        for chunk in stream:
            if "stream" in chunk:
                lines.extend(chunk["stream"].splitlines())
            if "error" in chunk or "errorDetail" in chunk:
                message = chunk.get("error") or chunk["errorDetail"].get("message", "")
                log.debug("build of %s failed:\n%s", context, "\n".join(lines + [message]))
                raise build_failure(f"building {tags[0]} from {context} failed: {message.strip()}", lines + [message],
                                    _hint(message, context))
            if "aux" in chunk and "ID" in chunk["aux"]:
                image_id = chunk["aux"]["ID"]
        log.debug("built %s:\n%s", tags[0], "\n".join(lines))
        if not image_id:
            raise build_failure(f"building {tags[0]} from {context} gave no image", lines, "see the build log above")
        for tag in tags[1:]:
            repository, version = _split(tag)
            self.client.api.tag(image_id, repository, version)
        return image_id

    def push(self, ref: str) -> str:
        repository, tag = _split(ref)
        stream: Iterable[dict[str, Any]] = self.client.api.push(
            repository, tag, stream=True, decode=True, auth_config=self._auth(ImageRef.parse(ref).registry))
        pushed = ""
        for chunk in stream:
            if "error" in chunk or "errorDetail" in chunk:
                message = chunk.get("error") or chunk["errorDetail"].get("message", "")
                raise RegistryError(f"pushing {ref} failed: {message}", "check that the registry answers and that "
                                    "the engine may use it (insecure-registries for plain HTTP)")
            if "aux" in chunk and chunk["aux"].get("Digest"):
                pushed = chunk["aux"]["Digest"]
        if not pushed:
            raise RegistryError(f"pushing {ref} ended without a digest", "see the engine's log")
        return pushed

    def remove(self, ref: str) -> None:
        import docker

        try:
            self.client.api.remove_image(ref, noprune=False)
        except docker.errors.ImageNotFound:
            pass
