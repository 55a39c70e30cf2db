"""Image references parsed once into a type: ``registry/repository[:tag][@digest]``."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from apex_tools.core.errors import SettingsError

DEFAULT_REGISTRY = "docker.io"
_DIGEST = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")


@dataclass(frozen=True, order=True)
class ImageRef:
    """A parsed image reference; ``str()`` gives it back in canonical form."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> ImageRef:
        """Parse ``text``; a first component with a dot, a colon or ``localhost`` is the registry."""
        rest, digest = (text.split("@", 1) + [None])[:2] if "@" in text else (text, None)
        tag = None
        last_slash = rest.rfind("/")
        colon = rest.rfind(":")
        if colon > last_slash:
            rest, tag = rest[:colon], rest[colon + 1 :]
        first, _, remainder = rest.partition("/")
        if remainder and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
            registry, repository = first, remainder
        else:
            registry, repository = DEFAULT_REGISTRY, rest
        if registry == DEFAULT_REGISTRY and "/" not in repository:
            repository = f"library/{repository}"
        ref = cls(registry, repository, tag, digest)
        problem = ref._problem()
        if problem:
            raise SettingsError(f"image reference {text!r}: {problem}", "use registry/namespace/name[:tag][@sha256:...]")
        return ref

    def _problem(self) -> str:
        if not self.repository or not all(_COMPONENT.match(c) for c in self.repository.split("/")):
            return f"repository {self.repository!r} is not lowercase letters, digits and separators"
        if self.tag is not None and not _TAG.match(self.tag):
            return f"tag {self.tag!r} is not valid (letters, digits, '_', '.', '-'; at most 128)"
        if self.digest is not None and not _DIGEST.match(self.digest):
            return f"digest {self.digest!r} is not algorithm:hex"
        return ""

    @property
    def reference(self) -> str:
        """What the registry API calls the reference: the digest if pinned, else the tag."""
        return self.digest or self.tag or "latest"

    @property
    def name(self) -> str:
        """``registry/repository`` without tag or digest."""
        return f"{self.registry}/{self.repository}"

    def with_tag(self, tag: str) -> ImageRef:
        return replace(self, tag=tag, digest=None)

    def with_digest(self, digest: str) -> ImageRef:
        return replace(self, digest=digest)

    def with_registry(self, registry: str) -> ImageRef:
        return replace(self, registry=registry)

    def __str__(self) -> str:
        out = self.name
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out
