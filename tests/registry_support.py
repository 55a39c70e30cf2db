"""Helpers for the registry tests: images pushed by hand through the API, proxies, token server."""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import http.server
import io
import json
import os
import shutil
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from apex_tools.registry.client import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    Manifest,
    RegistryClient,
)
from conftest import need, serve_http


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_blob(name: str, size: int, seed: str = "") -> tuple[bytes, str]:
    """A gzipped tar holding one file of ``size`` pseudo-random bytes; (blob, diff_id)."""
    # Joined once (linear): appending to bytes is quadratic, minutes for a few MB.
    content = b"".join(hashlib.sha256(f"{seed}{name}{counter}".encode()).digest()
                       for counter in range((size + 31) // 32))[:size]
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(content), 0, 0o644
        tar.addfile(info, io.BytesIO(content))
    tar_bytes = raw.getvalue()
    return gzip.compress(tar_bytes, mtime=0), digest_of(tar_bytes)


def push_image(
    client: RegistryClient,
    repository: str,
    tag: str,
    layers: list[tuple[bytes, str]],
    oci: bool = False,
    label: str = "",
) -> Manifest:
    """Push config, layers and a manifest (Docker schema 2, or OCI) by hand through the API."""
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "config": {"Labels": {"apex.test": label or tag}},
         "rootfs": {"type": "layers", "diff_ids": [diff for _, diff in layers]}},
        sort_keys=True,
    ).encode()
    config_type = "application/vnd.oci.image.config.v1+json" if oci else "application/vnd.docker.container.image.v1+json"
    layer_type = "application/vnd.oci.image.layer.v1.tar+gzip" if oci else "application/vnd.docker.image.rootfs.diff.tar.gzip"
    for blob in [config] + [blob for blob, _ in layers]:
        if client.has_blob(repository, digest_of(blob)) is None:
            client.upload_blob(repository, digest_of(blob), blob, len(blob))
    body: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST if oci else DOCKER_MANIFEST,
        "config": {"mediaType": config_type, "size": len(config), "digest": digest_of(config)},
        "layers": [{"mediaType": layer_type, "size": len(b), "digest": digest_of(b)} for b, _ in layers],
    }
    raw = json.dumps(body, indent=3).encode()
    manifest = Manifest(body["mediaType"], digest_of(raw), raw)
    client.put_manifest(repository, tag, manifest)
    return manifest


def push_index(client: RegistryClient, repository: str, tag: str, children: list[Manifest], oci: bool = False) -> Manifest:
    """Push a manifest list (or OCI index) over already pushed child manifests."""
    platforms = [("amd64", "linux"), ("arm64", "linux"), ("ppc64le", "linux")]
    body = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX if oci else DOCKER_LIST,
        "manifests": [
            {"mediaType": child.media_type, "size": len(child.raw), "digest": child.digest,
             "platform": {"architecture": arch, "os": os_}}
            for child, (arch, os_) in zip(children, platforms)
        ],
    }
    raw = json.dumps(body, indent=2).encode()
    manifest = Manifest(body["mediaType"], digest_of(raw), raw)
    for child in children:
        client.put_manifest(repository, child.digest, child)
    client.put_manifest(repository, tag, manifest)
    return manifest


# -- a proxy that counts requests and can fail some ------------------------------------------


@dataclass
class Proxy:
    """A loopback HTTP proxy in front of a registry; ``fail(predicate, times, status)`` injects
    error answers (status 0: the connection is dropped without one)."""

    upstream: str
    address: str = ""
    requests: list[tuple[str, str]] = field(default_factory=list)
    bytes_in: int = 0
    _failures: list[list[Any]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(self, predicate: Callable[[str, str], bool], times: int = 1, status: int = 500,
             headers: dict[str, str] | None = None) -> None:
        self._failures.append([predicate, times, status, headers or {}])

    def _injected(self, method: str, path: str) -> tuple[int, dict[str, str]] | None:
        with self._lock:
            self.requests.append((method, path))
            for failure in self._failures:
                if failure[1] > 0 and failure[0](method, path):
                    failure[1] -= 1
                    return failure[2], failure[3]
        return None

    def count(self, method: str, fragment: str) -> int:
        return sum(1 for m, p in self.requests if m == method and fragment in p)


def _handler(proxy: Proxy) -> type[http.server.BaseHTTPRequestHandler]:
    session = requests.Session()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                out = b""
                while True:
                    size = int(self.rfile.readline().strip() or b"0", 16)
                    if size == 0:
                        self.rfile.readline()
                        return out
                    out += self.rfile.read(size)
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length", "0") or 0))

        def _relay(self) -> None:
            body = self._body()
            with proxy._lock:
                proxy.bytes_in += len(body)
            injected = proxy._injected(self.command, self.path)
            if injected is not None:
                status, headers = injected
                if status == 0:  # drop the connection without an answer
                    self.close_connection = True
                    return
                payload = b'{"errors":[{"code":"UNKNOWN","message":"injected failure"}]}'
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "transfer-encoding", "content-length")}
            response = session.request(self.command, proxy.upstream + self.path, data=body, headers=headers,
                                       allow_redirects=False, stream=True)
            content = response.raw.read(decode_content=False) if self.command != "HEAD" else b""
            self.send_response(response.status_code)
            for key, value in response.raw.headers.items():
                if key.lower() in ("transfer-encoding", "connection", "content-length"):
                    continue
                if key.lower() == "location":
                    value = value.replace(proxy.upstream, f"http://{proxy.address}")
                self.send_header(key, value)
            length = response.headers.get("Content-Length") if self.command == "HEAD" else str(len(content))
            self.send_header("Content-Length", length or "0")
            self.end_headers()
            if content:
                self.wfile.write(content)

        do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _relay

    return Handler


@contextlib.contextmanager
def run_proxy(upstream_url: str) -> Iterator[Proxy]:
    """A counting, failure-injecting proxy in front of ``upstream_url``."""
    proxy = Proxy(upstream_url)
    with serve_http(_handler(proxy)) as address:
        proxy.address = address
        yield proxy


# -- a token server for the registry's `auth: token` -----------------------------------------


@dataclass
class TokenServer:
    """Issues RS256 JWTs signed with a self-signed certificate the registry trusts."""

    folder: Path
    users: dict[str, str]
    lifetime: int = 60
    address: str = ""
    issued: list[str] = field(default_factory=list)

    @property
    def key(self) -> Path:
        return self.folder / "token.key"

    @property
    def cert(self) -> Path:
        return self.folder / "token.crt"

    def registry_config(self) -> dict[str, Any]:
        return {"auth": {"token": {"realm": f"http://{self.address}/token", "service": "apex-test",
                                   "issuer": "apex-test-issuer", "rootcertbundle": str(self.cert)}}}

    def sign(self, account: str, scope: str) -> str:
        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        der = subprocess.run(["openssl", "x509", "-in", str(self.cert), "-outform", "DER"], capture_output=True,
                             check=True).stdout
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(der).decode()]}
        access = []
        for item in scope.split():
            kind, _, rest = item.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        claims = {"iss": "apex-test-issuer", "sub": account, "aud": "apex-test", "exp": now + self.lifetime,
                  "nbf": now - 10, "iat": now, "jti": os.urandom(8).hex(), "access": access}
        signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}".encode()
        signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.key)], input=signing_input,
                                   capture_output=True, check=True).stdout
        return f"{signing_input.decode()}.{b64(signature)}"


def _token_handler(server: TokenServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            from urllib.parse import parse_qs, urlparse

            query = parse_qs(urlparse(self.path).query)
            auth = self.headers.get("Authorization", "")
            user = ""
            if auth.startswith("Basic "):
                name, _, password = base64.b64decode(auth[6:]).decode().partition(":")
                if server.users.get(name) != password:
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                user = name
            scope = " ".join(query.get("scope", []))
            # Anonymous users may only pull; pushing needs an account.
            if not user:
                scope = " ".join(s.rpartition(":")[0] + ":pull" for s in scope.split())
            token = server.sign(user, scope)
            server.issued.append(scope)
            payload = json.dumps({"token": token, "expires_in": server.lifetime}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    return Handler


@contextlib.contextmanager
def run_token_server(folder: Path, users: dict[str, str], lifetime: int = 60) -> Iterator[TokenServer]:
    """A token server on loopback with a fresh RSA key and self-signed certificate."""
    folder.mkdir(parents=True, exist_ok=True)
    server = TokenServer(folder, users, lifetime)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=apex-test",
                    "-keyout", str(server.key), "-out", str(server.cert)], capture_output=True, check=True)
    with serve_http(_token_handler(server)) as address:
        server.address = address
        yield server


def forget_images(docker_client, registries) -> None:
    """Drop the engine's and buildah's tags of these (now stopped) registries."""
    import docker

    for image in docker_client.images.list():
        for tag in image.tags:
            if tag.startswith(tuple(f"{r}/" for r in registries)):
                with contextlib.suppress(docker.errors.APIError):
                    docker_client.images.remove(tag, force=True)
    if shutil.which("buildah"):
        listed = subprocess.run(["buildah", "images", "--format", "{{.Name}}:{{.Tag}}"], stdin=subprocess.DEVNULL, capture_output=True,
                                text=True).stdout.split()
        doomed = [name for name in listed if name.startswith(tuple(f"{r}/" for r in registries))]
        if doomed:
            subprocess.run(["buildah", "rmi", "--force", *doomed], stdin=subprocess.DEVNULL, capture_output=True)


def seed_default_deployment(client: RegistryClient, except_image: str) -> tuple[Any, Any]:
    """Push every image of the default scenario (and the Ceph image) as small images sharing a
    base layer, all but ``except_image``, which the test makes for real; returns (catalog, settings)."""
    from apex_tools.catalog.images import load_catalog
    from apex_tools.core.config import settings_path
    from apex_tools.core.settings import load_deploy_settings

    settings = load_deploy_settings(settings_path("os-nosdn-nofeature-noha", "deploy"))
    catalog = load_catalog(settings.os_version)
    base = [layer_blob("base", 20_000)]
    for image in catalog.deployment_images(settings):
        if image.name != except_image:
            push_image(client, f"tripleomaster/centos-binary-{image.name}", "current-tripleo",
                       base + [layer_blob(image.name, 500)])
    push_image(client, catalog.ceph.repository, catalog.ceph.tag, base + [layer_blob("ceph", 700)])
    return catalog, settings


def engine_push(docker_client: Any, ref: str, tag: str) -> None:
    """Push a local engine image; an error in the push stream fails the test."""
    for line in docker_client.api.push(ref, tag, stream=True, decode=True):
        assert "error" not in line, line


def push_keystone_image(docker_client: Any, debian_image: Any, ref: str, site: str) -> None:
    """Build a keystone service image (user keystone, ``keystone/api.py`` saying "old") and push it as ``ref``."""
    dockerfile = (
        f"FROM {debian_image('patch', 'python3-minimal')}\n"
        f"RUN useradd -u 4242 -M keystone && mkdir -p {site}/keystone && touch {site}/keystone/__init__.py"
        f" && printf 'def hello():\\n    return \"old\"\\n' > {site}/keystone/api.py\nUSER keystone\n"
    )
    docker_client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=f"{ref}:current-tripleo",
                               network_mode="host", rm=True)
    engine_push(docker_client, ref, "current-tripleo")


def unpack(registry: str, ref: str, where: Path) -> Path:
    """``skopeo copy`` to an OCI layout and ``umoci unpack`` it (clients we did not write); the rootfs."""
    need(subprocess.run(["sh", "-c", "command -v skopeo && command -v umoci"], capture_output=True).returncode == 0,
         "skopeo and umoci (Debian packages)")
    layout = where.parent / (where.name + "-oci")
    subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{registry}/{ref}",
                    f"oci:{layout}:x"], check=True, capture_output=True, stdin=subprocess.DEVNULL)
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:x", str(where)], check=True, capture_output=True)
    return where / "rootfs"
