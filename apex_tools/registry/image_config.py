"""Read an image's config (creation time, user) through the registry API, without pulling it.

Uses the project's registry client (auth, TLS modes, retries): GET the manifest (schema 2, OCI,
or a list/index, whose linux/amd64 entry is followed), then the config blob.
"""

from __future__ import annotations

import json
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from apex_tools.core.errors import RegistryError
from apex_tools.core.reference import ImageRef
from apex_tools.registry.auth import parse_time
from apex_tools.registry.client import RegistryClient, RegistryHTTPError


@dataclass(frozen=True)
class ImageInfo:
    """What patch-containers needs of an upstream image: when it was built and its user."""

    created: datetime | None
    user: str


# ``inspect(ref) -> ImageInfo | None``; None means the image does not exist there.
Inspector = Callable[[ImageRef], "ImageInfo | None"]


def platform_entry(children: list[dict]) -> dict | None:
    for child in children:
        platform = child.get("platform", {})
        if platform.get("architecture") == "amd64" and platform.get("os", "linux") == "linux":
            return child
    return children[0] if children else None


# A config blob's digest names its content: what was read of it once holds for good.
CONFIGS_KEPT = 256


def inspect_image(client: RegistryClient, ref: ImageRef,
                  configs: MutableMapping[str, Any] | None = None) -> ImageInfo | None:
    """The image's creation time and user from its config blob; None when the registry lacks it.

    ``configs`` (config digest → ``{"created", "user"}``) spares the blob's GET for a config read
    before; new ones are added (the oldest dropped past ``CONFIGS_KEPT``)."""
    try:
        manifest = client.get_manifest(ref.repository, ref.reference)
        if manifest.is_index:
            child = platform_entry(manifest.children())
            if child is None:
                return None
            manifest = client.get_manifest(ref.repository, child["digest"])
    except RegistryHTTPError as exc:
        if exc.status == 404:
            return None
        raise
    config = manifest.json().get("config", {}).get("digest")
    if not config:
        raise RegistryError(f"{ref}: manifest has no config blob (schema 1?)", "use schema 2 or OCI images upstream")
    known = configs.get(config) if configs is not None else None
    if not isinstance(known, dict) or not {"created", "user"} <= set(known):
        data = json.loads(client.get_blob(ref.repository, config))
        known = {"created": data.get("created"), "user": (data.get("config") or {}).get("User") or ""}
        if configs is not None:
            configs[config] = known
            while len(configs) > CONFIGS_KEPT:
                del configs[next(iter(configs))]
    return ImageInfo(created=parse_time(known["created"]), user=known["user"])
