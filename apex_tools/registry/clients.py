"""Registry clients for a run: one per host, each with the TLS mode and credentials its section sets."""

from __future__ import annotations

import threading

from apex_tools.core.config import Options
from apex_tools.registry.auth import Credentials, docker_config_credentials
from apex_tools.registry.client import RegistryClient


class Clients:
    """One ``RegistryClient`` per registry host, configured from the options."""

    def __init__(self, options: Options, local: str) -> None:
        self.options = options
        self.local = local
        self._clients: dict[str, RegistryClient] = {}
        self._lock = threading.Lock()

    def _settings(self, host: str) -> tuple[str, Credentials | None, bool]:
        """The local registry uses ``registry.*``; upstream (and its Ceph registry) ``upstream.*``;
        any other host verifies TLS and takes credentials from docker's config.json."""
        upstream_hosts = {self.options.upstream.registry, self.options.upstream.ceph_registry} - {""}
        if host != self.local and host not in upstream_hosts:
            return "verify", docker_config_credentials(host), False
        section = self.options.registry if host == self.local else self.options.upstream
        credentials = Credentials(section.username, section.password) if section.username else None
        return section.tls_mode, credentials or docker_config_credentials(host), section.insecure

    def __call__(self, host: str) -> RegistryClient:
        with self._lock:
            if host not in self._clients:
                tls, credentials, plain = self._settings(host)
                self._clients[host] = RegistryClient(host, tls, credentials, plain_credentials=plain)
            return self._clients[host]
