"""The local registry on a shared network: a random secret per work dir, no deletes, htpasswd auth
(real docker-registry); credentials only to the registry's own host or an https realm, and over
plain HTTP only to loopback (a hostile registry on loopback naming other places)."""

from __future__ import annotations

import contextlib
import http.server
import shutil
import stat

import pytest
import requests
import yaml

from apex_tools.core.errors import RegistryError
from apex_tools.registry.auth import Credentials, refuse_credentials
from apex_tools.registry.client import RegistryClient
from apex_tools.registry.server import ensure_local_registry, paths, stop_local_registry
from conftest import free_port, need, serve_http
from registry_support import layer_blob, push_image

CREDS = Credentials("apex", "s3cret-registry-pw")


@pytest.fixture
def work_dirs(tmp_path):
    dirs = [tmp_path / "a", tmp_path / "b"]
    yield dirs
    for work in dirs:
        stop_local_registry(work)


def test_local_registry_has_a_private_random_secret_no_deletes_and_htpasswd_auth(work_dirs):
    need(shutil.which("docker-registry") is not None, "docker-registry")
    address = f"127.0.0.1:{free_port()}"
    client = RegistryClient(address, tls="http", credentials=CREDS)
    assert ensure_local_registry(address, work_dirs[0], client).started
    where = paths(work_dirs[0])
    config = yaml.safe_load(where["config"].read_text())
    for private in (where["config"], where["secret"], where["htpasswd"]):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600, private
    assert config["http"]["secret"] == where["secret"].read_text().strip() and len(config["http"]["secret"]) == 64
    assert config["storage"]["delete"]["enabled"] is False
    assert CREDS.password not in where["htpasswd"].read_text()  # a bcrypt hash, not the password

    # Anonymous: refused; with the credentials: a real push; a delete: refused whoever asks.
    assert requests.get(f"http://{address}/v2/", timeout=5).status_code == 401
    pushed = push_image(client, "apex/safe", "v1", [layer_blob("l", 1000)])
    assert client.head_manifest("apex/safe", "v1")[0] == pushed.digest
    with pytest.raises(RegistryError, match="HTTP 405"):
        client.request("DELETE", f"/v2/apex/safe/manifests/{pushed.digest}", repository="apex/safe", ok=(202,))
    with pytest.raises(RegistryError, match="HTTP 401"):
        RegistryClient(address, tls="http", credentials=Credentials("apex", "wrong")).tags("apex/safe")

    # Another work dir gets another secret; the htpasswd file is kept while it still verifies.
    other = f"127.0.0.1:{free_port()}"
    ensure_local_registry(other, work_dirs[1], RegistryClient(other, tls="http"))
    assert paths(work_dirs[1])["secret"].read_text() != where["secret"].read_text()
    assert "auth" not in yaml.safe_load(paths(work_dirs[1])["config"].read_text())


@pytest.mark.parametrize("url, registry, plain_ok, refused", [
    ("https://auth.example/token", "registry.example:5000", False, None),
    ("http://127.0.0.1:5000/v2/", "127.0.0.1:5000", False, None),
    ("http://192.0.2.1:8787/v2/", "192.0.2.1:8787", False, "plain HTTP to another machine"),
    ("http://192.0.2.1:8787/v2/", "192.0.2.1:8787", True, None),
    ("http://127.0.0.2:9/token", "127.0.0.1:5000", True, "neither the registry's own host nor an https"),
], ids=["https-realm", "own-loopback-http", "plain-http-remote", "plain-http-remote-insecure", "http-realm-elsewhere"])
def test_where_credentials_may_go(url, registry, plain_ok, refused):
    why = refuse_credentials(url, registry, plain_ok)
    assert (why is None) if refused is None else (refused in why)


def test_a_hostile_registry_gets_no_credentials_sent_elsewhere():
    """It names an http token realm on another host, then an upload Location on another host."""
    seen: list[tuple[str, str, str | None]] = []  # (host, path, Authorization) of every request elsewhere

    class Elsewhere(http.server.BaseHTTPRequestHandler):
        def _any(self):
            seen.append((self.server.server_address[0], self.path, self.headers.get("Authorization")))
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            self.send_response(201 if self.command == "PUT" else 200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        do_GET = do_PUT = _any

        def log_message(self, *args):
            pass

    with serve_http(Elsewhere, "127.0.0.2") as other:
        mode = {"challenge": f'Bearer realm="http://{other}/token",service="x"'}

        class Hostile(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(401)
                self.send_header("WWW-Authenticate", mode["challenge"])
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_POST(self):
                if not self.headers.get("Authorization"):
                    return self.do_GET()
                self.send_response(202)
                self.send_header("Location", f"http://{other}/upload/1")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        with serve_http(Hostile) as hostile:
            client = RegistryClient(hostile, tls="http", credentials=CREDS, retries=0)
            with pytest.raises(RegistryError, match="refusing to send the registry credentials") as err:
                client.tags("apex/x")
            assert f"http://{other}/token" in err.value.message
            assert seen == [], "nothing went to the realm"

            mode["challenge"] = 'Basic realm="hostile"'  # Basic to its own (loopback) host is fine
            blob, _ = layer_blob("l", 100)
            client = RegistryClient(hostile, tls="http", credentials=CREDS, retries=0)
            location = client.start_upload("apex/x")
            assert location == f"http://{other}/upload/1"
            with contextlib.suppress(RegistryError):
                client.upload_blob("apex/x", "sha256:" + "0" * 64, blob, len(blob), location)
    assert seen and all(auth is None for _, _, auth in seen), seen
