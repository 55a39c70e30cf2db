"""buildah through ``sh``: no TTY, full error output, TLS verification off for insecure registries."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from apex_tools.core.errors import RegistryError
from apex_tools.core.reference import ImageRef
from apex_tools.builders.base import Builder, EngineUnavailable, build_failure

log = logging.getLogger(__name__)


class BuildahBuilder(Builder):
    """``buildah bud`` and ``buildah push`` in Docker format (older TripleO consumers need it)."""

    name = "buildah"

    def __init__(self, insecure_registries: Sequence[str] = ()) -> None:
        self.insecure = set(insecure_registries)
        self._buildah: Any = None

    @property
    def buildah(self) -> Any:
        # Resolved on first use, so choosing this builder costs nothing until it builds.
        if self._buildah is None:
            import sh

            try:
                self._buildah = sh.Command("buildah").bake(_tty_out=False, _err_to_out=True, _truncate_exc=False)
            except sh.CommandNotFound:
                raise EngineUnavailable("buildah is not installed",
                                        "apt-get install buildah, or set builder_fallback: docker") from None
        return self._buildah

    def _tls(self, ref: str) -> str:
        registry = ImageRef.parse(ref).registry
        return f"--tls-verify={'false' if registry in self.insecure else 'true'}"

    def build(self, context: Path, tags: Sequence[str]) -> str:
        import sh

        args = ["bud", "--format", "docker", "--network", "host", "--pull-always", self._tls(tags[0]), "--layers"]
        for tag in tags:
            args += ["-t", tag]
        try:
            output = str(self.buildah(*args, str(context)))
        except sh.ErrorReturnCode as exc:
            lines = exc.stdout.decode(errors="replace").splitlines()
            log.debug("buildah bud %s failed:\n%s", context, "\n".join(lines))
            raise build_failure(f"building {tags[0]} from {context} failed (buildah exit {exc.exit_code})", lines,
                                f"fix the Dockerfile or patches in {context}, then re-run") from None
        log.debug("built %s:\n%s", tags[0], output)
        return output.strip().splitlines()[-1] if output.strip() else ""

    def push(self, ref: str) -> str:
        import tempfile

        import sh

        with tempfile.TemporaryDirectory(prefix="apex-buildah-") as tmp:
            digestfile = Path(tmp) / "digest"
            try:
                self.buildah("push", "--format", "v2s2", "--digestfile", str(digestfile), self._tls(ref), ref,
                             f"docker://{ref}")
            except sh.ErrorReturnCode as exc:
                output = exc.stdout.decode(errors="replace").strip()
                raise RegistryError(f"pushing {ref} failed (buildah exit {exc.exit_code}): {output}",
                                    "check that the registry answers and its TLS mode") from None
            return digestfile.read_text().strip()

    def remove(self, ref: str) -> None:
        import sh

        try:
            self.buildah("rmi", ref)
        except sh.ErrorReturnCode:
            pass
