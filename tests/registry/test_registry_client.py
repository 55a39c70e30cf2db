"""The registry client against a real Debian docker-registry on loopback (plain, token, htpasswd)."""

from __future__ import annotations

import base64
import json
import time
import warnings
from pathlib import Path

import pytest

from apex_tools.core.errors import RegistryError
from apex_tools.registry.auth import Credentials, docker_config_credentials
from apex_tools.registry.client import DOCKER_LIST, OCI_MANIFEST, RegistryClient, RegistryHTTPError

from registry_support import layer_blob, push_image, push_index, run_proxy, run_token_server


def test_manifests_blobs_tags_and_paginated_catalog(registry):
    client = RegistryClient(registry.address, tls="http")
    assert client.ping()
    base = layer_blob("base", 4096)
    pushed = {}
    for name in ("a", "b", "c", "d", "e"):
        pushed[name] = push_image(client, f"apex/{name}", "v1", [base, layer_blob(name, 512)])
    push_image(client, "apex/a", "v2", [base], oci=True)

    assert client.catalog() == [f"apex/{n}" for n in "abcde"]
    assert client._paginate("/v2/_catalog", "repositories", page=2) == [f"apex/{n}" for n in "abcde"]
    assert client._paginate("/v2/apex/a/tags/list", "tags", "apex/a", page=1) == ["v1", "v2"]
    assert client.tags("apex/nothing") == []
    digest, media = client.head_manifest("apex/a", "v2")
    assert media == OCI_MANIFEST
    assert client.get_manifest("apex/a", digest).raw == client.get_manifest("apex/a", "v2").raw
    assert client.head_manifest("apex/a", "missing") is None
    assert client.has_blob("apex/b", pushed["b"].blobs()[1]["digest"]) == len(base[0])


def test_mount_across_repositories_moves_no_bytes(registry):
    client = RegistryClient(registry.address, tls="http")
    blob, _ = layer_blob("shared", 100_000)
    manifest = push_image(client, "apex/source", "v1", [(blob, "x")])
    layer = manifest.blobs()[1]["digest"]
    assert client.has_blob("apex/other", layer) is None
    assert client.mount_blob("apex/other", layer, "apex/source") is None
    assert client.has_blob("apex/other", layer) == len(blob)
    # A mount from a repository without the blob opens an upload session instead.
    location = client.mount_blob("apex/third", layer, "apex/nowhere")
    assert location and "/blobs/uploads/" in location
    assert client.upload_blob("apex/third", layer, blob, len(blob), location) == len(blob)


def test_put_blob_uploads_once_and_then_finds_it_with_one_post(registry):
    client = RegistryClient(registry.address, tls="http")
    blob, _ = layer_blob("small", 300)
    from registry_support import digest_of

    digest = digest_of(blob)
    assert client.put_blob("apex/sig", digest, blob) is True
    assert client.get_blob("apex/sig", digest) == blob
    assert client.put_blob("apex/sig", digest, blob) is False  # there already: the mount answered 201
    # In the registry but not in this repository: uploaded here too (never mounted from elsewhere).
    assert client.put_blob("apex/other-sig", digest, blob) is True
    assert client.has_blob("apex/other-sig", digest) == len(blob)


def test_upload_with_wrong_digest_is_refused(registry):
    client = RegistryClient(registry.address, tls="http")
    blob, _ = layer_blob("x", 1000)
    other, _ = layer_blob("y", 1000)
    from registry_support import digest_of

    with pytest.raises(RegistryHTTPError) as caught:
        client.upload_blob("apex/x", digest_of(blob), other, len(other))
    assert caught.value.status == 400
    assert caught.value.retryable, "a corrupt transfer is worth sending again"
    assert "do not hash to" in caught.value.message and digest_of(blob) in caught.value.message
    assert client.has_blob("apex/x", digest_of(blob)) is None


def test_error_names_registry_repository_reference_and_status(registry):
    client = RegistryClient(registry.address, tls="http")
    with pytest.raises(RegistryHTTPError) as caught:
        client.get_manifest("apex/absent", "v9")
    error = caught.value
    assert (error.registry, error.repository, error.reference, error.status) == (
        registry.address, "apex/absent", "v9", 404)
    assert f"{registry.address}/apex/absent:v9" in error.message and "MANIFEST_UNKNOWN" in error.message
    assert error.hint


@pytest.mark.parametrize(
    "status, headers, min_wait",
    [(503, {}, 0.0), (500, {}, 0.0), (429, {"Retry-After": "1"}, 1.0), (0, {}, 0.0)],
    ids=["503-then-ok", "500-then-ok", "429-retry-after-1s", "dropped-connection-then-ok"],
)
def test_transient_failures_are_retried(registry, status, headers, min_wait):
    with run_proxy(registry.url) as proxy:
        client = RegistryClient(proxy.address, tls="http", backoff=0.01)
        push_image(client, "apex/r", "v1", [layer_blob("r", 100)])
        proxy.fail(lambda m, p: m == "GET" and "/manifests/" in p, times=2, status=status, headers=headers)
        started = time.monotonic()
        assert client.get_manifest("apex/r", "v1").media_type
        assert time.monotonic() - started >= min_wait * 2
        assert proxy.count("GET", "/manifests/v1") == 3


def test_persistent_5xx_fails_after_retries_with_status(registry):
    with run_proxy(registry.url) as proxy:
        client = RegistryClient(proxy.address, tls="http", retries=2, backoff=0.01)
        proxy.fail(lambda m, p: "/tags/list" in p, times=99, status=502)
        with pytest.raises(RegistryHTTPError) as caught:
            client.tags("apex/r")
        assert caught.value.status == 502 and caught.value.retryable
        assert proxy.count("GET", "/tags/list") == 3


def test_connection_refused_is_a_registry_error():
    from conftest import free_port

    client = RegistryClient(f"127.0.0.1:{free_port()}", tls="http", retries=1, backoff=0.01)
    assert not client.ping()
    with pytest.raises(RegistryError, match="(?m): connection refused$"):
        client.head_manifest("apex/x", "v1")


def test_unknown_tls_mode_lists_the_valid_ones():
    with pytest.raises(RegistryError, match="verify, no-verify, http"):
        RegistryClient("127.0.0.1:1", tls="insecure")


@pytest.fixture
def token_registry(registry_factory, tmp_path):
    with run_token_server(tmp_path / "tokens", {"apex": "s3cret"}, lifetime=11) as tokens:
        yield registry_factory("token-registry", tokens.registry_config()), tokens


def test_bearer_tokens_per_scope_cached_renewed_and_anonymous_pull(token_registry):
    registry, tokens = token_registry
    client = RegistryClient(registry.address, tls="http", credentials=Credentials("apex", "s3cret"))
    push_image(client, "apex/t", "v1", [layer_blob("t", 100)])
    # The registry's challenge lists the actions in Go map order: "pull,push" or "push,pull".
    push_tokens = [s for s in tokens.issued if s.rpartition(":")[0] == "repository:apex/t"
                   and set(s.rpartition(":")[2].split(",")) == {"pull", "push"}]
    assert len(push_tokens) == 1, "one token for every push request of the scope"
    assert "repository:apex/t:pull" in tokens.issued
    first = len(tokens.issued)
    assert client.head_manifest("apex/t", "v1") is not None
    assert len(tokens.issued) == first, "the cached pull token is reused"
    # Tokens live 11 s and are renewed 10 s before expiry: after 1.5 s a new one is fetched.
    time.sleep(1.5)
    assert client.head_manifest("apex/t", "v1") is not None
    assert len(tokens.issued) == first + 1

    anonymous = RegistryClient(registry.address, tls="http")
    assert anonymous.get_manifest("apex/t", "v1").digest
    with pytest.raises(RegistryHTTPError) as caught:
        push_image(anonymous, "apex/t", "v2", [layer_blob("u", 100)])
    assert caught.value.status == 401


def test_wrong_password_for_token_server_is_named(token_registry):
    registry, _ = token_registry
    client = RegistryClient(registry.address, tls="http", credentials=Credentials("apex", "wrong"))
    with pytest.raises(RegistryError, match="token request .* failed") as caught:
        client.head_manifest("apex/t", "v1")
    assert "wrong" not in str(caught.value)


def _htpasswd(path: Path, user: str, password: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt

    path.write_text(f"{user}:{crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))}\n")


def test_basic_auth_with_htpasswd_and_docker_config(registry_factory, tmp_path, monkeypatch):
    _htpasswd(tmp_path / "htpasswd", "apex", "pw")
    registry = registry_factory("basic", {"auth": {"htpasswd": {"realm": "apex", "path": str(tmp_path / "htpasswd")}}})
    config = tmp_path / "docker"
    config.mkdir()
    (config / "config.json").write_text(json.dumps(
        {"auths": {registry.address: {"auth": base64.b64encode(b"apex:pw").decode()}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(config))
    credentials = docker_config_credentials(registry.address)
    assert credentials == Credentials("apex", "pw") and "pw" not in repr(credentials)

    client = RegistryClient(registry.address, tls="http", credentials=credentials)
    child = push_image(client, "apex/b", "amd64", [layer_blob("b", 100)])
    index = push_index(client, "apex/b", "v1", [child])
    assert client.head_manifest("apex/b", "v1") == (index.digest, DOCKER_LIST)

    with pytest.raises(RegistryHTTPError) as caught:
        RegistryClient(registry.address, tls="http").head_manifest("apex/b", "v1")
    assert caught.value.status == 401


def test_rejected_token_gets_exactly_one_reauthentication(token_registry):
    registry, tokens = token_registry
    client = RegistryClient(registry.address, tls="http", credentials=Credentials("apex", "s3cret"))
    push_image(client, "apex/t", "v1", [layer_blob("t", 100)])
    scope = "repository:apex/t:pull"
    client.tokens.put(scope, "not-a-valid-token", time.time() + 3600)
    issued = len(tokens.issued)
    assert client.head_manifest("apex/t", "v1") is not None
    assert len(tokens.issued) == issued + 1, "the rejected token was replaced once"


@pytest.fixture
def tls_registry(tmp_path):
    """A registry serving HTTPS with a self-signed certificate (not trusted by the system)."""
    import shutil
    import subprocess

    import requests
    import yaml

    from conftest import free_port, need, stop_process

    need(shutil.which("docker-registry") is not None, "docker-registry")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(tmp_path / "tls.key"),
                    "-out", str(tmp_path / "tls.crt")], capture_output=True, check=True)
    address = f"127.0.0.1:{free_port()}"
    (tmp_path / "config.yml").write_text(yaml.safe_dump({
        "version": 0.1, "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(tmp_path / "data")}},
        "http": {"addr": address, "tls": {"certificate": str(tmp_path / "tls.crt"), "key": str(tmp_path / "tls.key")}},
    }))
    proc = subprocess.Popen(["docker-registry", "serve", str(tmp_path / "config.yml")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                requests.get(f"https://{address}/v2/", verify=False, timeout=2)
                break
            except requests.RequestException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield address
    finally:
        stop_process(proc)


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_tls_modes_are_explicit(tls_registry):
    no_verify = RegistryClient(tls_registry, tls="no-verify")
    assert no_verify.base.startswith("https://") and no_verify.ping()
    push_image(no_verify, "apex/tls", "v1", [layer_blob("tls", 100)])
    with pytest.raises(RegistryError, match="TLS failed") as caught:
        RegistryClient(tls_registry, tls="verify").head_manifest("apex/tls", "v1")
    assert "no-verify" in caught.value.hint
    with pytest.raises(RegistryHTTPError) as plain:
        RegistryClient(tls_registry, tls="http", retries=0).head_manifest("apex/tls", "v1")
    assert plain.value.status == 400, "plain HTTP to an HTTPS registry is refused, not silently upgraded"
