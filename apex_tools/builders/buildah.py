"""buildah through ``sh``: no TTY, full error output, TLS verification off for insecure registries."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from apex_tools.core.errors import RegistryError
from apex_tools.core.reference import ImageRef
from apex_tools.builders.base import Builder, EngineUnavailable, build_failure
from apex_tools.registry.auth import Credentials

log = logging.getLogger(__name__)


class BuildahBuilder(Builder):
    """``buildah bud`` and ``buildah push`` in Docker format (older TripleO consumers need it)."""

    name = "buildah"

    def __init__(self, insecure_registries: Sequence[str] = (),
                 credentials: Mapping[str, Credentials] | None = None) -> None:
        self.insecure = set(insecure_registries)
        self.credentials = dict(credentials or {})
        self._buildah: Any = None

    @contextlib.contextmanager
    def _authfile(self) -> Iterator[list[str]]:
        """``--authfile`` of a private temporary file holding the credentials (never on the command line)."""
        if not self.credentials:
            yield []
            return
        auths = {host: {"auth": base64.b64encode(f"{c.username}:{c.password}".encode()).decode()}
                 for host, c in self.credentials.items()}
        with tempfile.TemporaryDirectory(prefix="apex-buildah-") as tmp:  # 0700
            path = Path(tmp) / "auth.json"
            path.write_text(json.dumps({"auths": auths}))
            yield ["--authfile", str(path)]

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
            with self._authfile() as auth:
                output = str(self.buildah(*args, *auth, str(context)))
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
                with self._authfile() as auth:
                    self.buildah("push", "--format", "v2s2", "--digestfile", str(digestfile), self._tls(ref), *auth,
                                 ref, f"docker://{ref}")
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
