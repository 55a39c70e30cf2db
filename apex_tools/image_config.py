"""Read an image's config (creation time, user) through the registry API, without pulling it.

A minimal client for patch-containers: GET the manifest (schema 2, OCI, or a list/index, of
which the linux/amd64 entry is followed), then the config blob. Anonymous bearer tokens are
fetched when the registry asks for one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import requests

from .errors import RegistryError
from .reference import ImageRef

MANIFEST_TYPES = ", ".join([
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.index.v1+json",
])
_LISTS = ("application/vnd.docker.distribution.manifest.list.v2+json", "application/vnd.oci.image.index.v1+json")


@dataclass(frozen=True)
class ImageInfo:
    """What patch-containers needs of an upstream image: when it was built and its user."""

    created: datetime | None
    user: str


# ``inspect(ref) -> ImageInfo | None``; None means the image does not exist there.
Inspector = Callable[[ImageRef], "ImageInfo | None"]


def parse_time(text: str | None) -> datetime | None:
    """An RFC 3339 time with up to nanoseconds (Go's format) as an aware datetime."""
    if not text:
        return None
    text = re.sub(r"(\.\d{6})\d+", r"\1", text.replace("Z", "+00:00"))
    return datetime.fromisoformat(text)


class ConfigReader:
    """Fetch image configs from registries; ``insecure(registry)`` says when to use plain HTTP."""

    def __init__(self, insecure: Callable[[str], bool], timeout: float = 30.0,
                 session: requests.Session | None = None) -> None:
        self.insecure = insecure
        self.timeout = timeout
        self.session = session or requests.Session()
        self._tokens: dict[str, str] = {}

    def _base(self, registry: str) -> str:
        host = "registry-1.docker.io" if registry == "docker.io" else registry
        return f"{'http' if self.insecure(registry) else 'https'}://{host}/v2"

    def _get(self, ref: ImageRef, path: str, accept: str = "") -> requests.Response:
        url = f"{self._base(ref.registry)}/{ref.repository}/{path}"
        headers = {"Accept": accept} if accept else {}
        token = self._tokens.get(ref.name)
        for _ in range(2):
            if token:
                headers["Authorization"] = f"Bearer {token}"
            try:
                response = self.session.get(url, headers=headers, timeout=self.timeout)
            except requests.RequestException as exc:
                raise RegistryError(f"{ref}: cannot reach registry {ref.registry}: {exc.__class__.__name__}",
                                    "check upstream.registry and the network, or set no_fetch") from None
            if response.status_code != 401 or token:
                return response
            token = self._anonymous_token(response, ref)
            self._tokens[ref.name] = token
        return response

    def _anonymous_token(self, response: requests.Response, ref: ImageRef) -> str:
        challenge = response.headers.get("WWW-Authenticate", "")
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        if not challenge.lower().startswith("bearer") or "realm" not in params:
            raise RegistryError(f"{ref}: registry {ref.registry} needs credentials ({challenge or 'HTTP 401'})",
                                "patch-containers reads upstream anonymously; use a public upstream")
        query = {"service": params.get("service", ""), "scope": f"repository:{ref.repository}:pull"}
        answer = self.session.get(params["realm"], params=query, timeout=self.timeout)
        if not answer.ok:
            raise RegistryError(f"{ref}: anonymous token refused by {params['realm']} (HTTP {answer.status_code})",
                                "check that the upstream image is public")
        body = answer.json()
        return body.get("token") or body.get("access_token") or ""

    def _manifest(self, ref: ImageRef, reference: str) -> dict[str, Any] | None:
        response = self._get(ref, f"manifests/{reference}", MANIFEST_TYPES)
        if response.status_code == 404:
            return None
        if not response.ok:
            raise RegistryError(f"{ref}: manifest: HTTP {response.status_code} from {ref.registry}",
                                "check the upstream settings (registry, namespace, prefix, tag)")
        return response.json()

    def inspect(self, ref: ImageRef) -> ImageInfo | None:
        """The image's creation time and user; None when the registry has no such image."""
        manifest = self._manifest(ref, ref.reference)
        if manifest is None:
            return None
        if manifest.get("mediaType") in _LISTS or "manifests" in manifest:
            entries = manifest.get("manifests", [])
            chosen = next((m for m in entries if m.get("platform", {}).get("architecture") == "amd64"
                           and m.get("platform", {}).get("os", "linux") == "linux"), entries[0] if entries else None)
            manifest = self._manifest(ref, chosen["digest"]) if chosen else None
            if manifest is None:
                return None
        digest = manifest.get("config", {}).get("digest")
        if not digest:
            raise RegistryError(f"{ref}: manifest has no config blob (schema 1?)", "use schema 2 or OCI images upstream")
        blob = self._get(ref, f"blobs/{digest}")
        if not blob.ok:
            raise RegistryError(f"{ref}: config blob {digest}: HTTP {blob.status_code}", "the registry lost a blob")
        config = json.loads(blob.content)
        return ImageInfo(created=parse_time(config.get("created")), user=(config.get("config") or {}).get("User") or "")
