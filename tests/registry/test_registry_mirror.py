"""Mirroring between two real registries on loopback: digests kept, blobs moved once, re-runs free."""

from __future__ import annotations

import io
import os

import pytest

from apex_tools.core.reference import ImageRef
from apex_tools.registry.client import RegistryClient
from apex_tools.registry.mirror import ALREADY_THERE, FAILED, MIRRORED, CopyJob, Mirror

from registry_support import layer_blob, push_image, push_index, run_proxy


def _clients(*clients: RegistryClient):
    by_host = {c.host: c for c in clients}
    return by_host.__getitem__


@pytest.fixture
def upstream_images(registry_factory):
    """An upstream registry with 6 images over a shared two-layer base, a manifest list and an OCI image."""
    upstream = registry_factory("upstream")
    client = RegistryClient(upstream.address, tls="http")
    base = [layer_blob("base-1", 300_000), layer_blob("base-2", 50_000)]
    names = []
    for i in range(6):
        push_image(client, f"tripleomaster/centos-binary-svc{i}", "current-tripleo",
                   base + [layer_blob(f"svc{i}", 10_000 + i)])
        names.append(f"tripleomaster/centos-binary-svc{i}")
    children = [push_image(client, "tripleomaster/multi", f"arch{i}", [base[0], layer_blob(f"arch{i}", 2000)])
                for i in range(2)]
    push_index(client, "tripleomaster/multi", "current-tripleo", children)
    push_image(client, "tripleomaster/oci", "current-tripleo", [base[1], layer_blob("oci", 3000)], oci=True)
    names += ["tripleomaster/multi", "tripleomaster/oci"]
    return upstream, client, names


def _unique_blob_bytes(client: RegistryClient, repositories: list[str]) -> int:
    sizes: dict[str, int] = {}
    for repo in repositories:
        manifest = client.get_manifest(repo, "current-tripleo")
        for m in [manifest] + [client.get_manifest(repo, c["digest"]) for c in manifest.children()]:
            sizes.update({b["digest"]: b["size"] for b in m.blobs()})
    return sum(sizes.values())


def _jobs(upstream, local, names):
    return [CopyJob(ImageRef.parse(f"{upstream.address}/{n}:current-tripleo"),
                    ImageRef.parse(f"{local.address}/{n}:current-tripleo")) for n in names]


def test_mirror_keeps_digests_sends_each_blob_once_and_rerun_moves_nothing(upstream_images, registry_factory):
    upstream, up_client, names = upstream_images
    local = registry_factory("local")
    with run_proxy(local.url) as proxy:
        local_client = RegistryClient(proxy.address, tls="http")
        jobs = [CopyJob(j.source, j.target.with_registry(proxy.address)) for j in _jobs(upstream, local, names)]
        mirror = Mirror(_clients(up_client, local_client), jobs=4)
        results = mirror.copy_all(jobs)

        assert [r.status for r in results] == [MIRRORED] * len(names)
        for result in results:
            source = result.job.source
            assert local_client.head_manifest(source.repository, "current-tripleo")[0] == \
                up_client.head_manifest(source.repository, "current-tripleo")[0] == result.digest
        unique = _unique_blob_bytes(up_client, names)
        assert mirror.stats.bytes_sent == unique
        assert proxy.bytes_in >= unique
        assert mirror.stats.blobs_mounted > 0, "shared base layers are mounted, not sent again"
        # Both platform manifests of the list were copied by digest.
        index = local_client.get_manifest("tripleomaster/multi", "current-tripleo")
        assert all(local_client.head_manifest("tripleomaster/multi", c["digest"]) for c in index.children())

        proxy.requests.clear()
        again = Mirror(_clients(up_client, local_client), jobs=4)
        rerun = again.copy_all(jobs)
        assert [r.status for r in rerun] == [ALREADY_THERE] * len(names)
        assert again.stats.bytes_sent == 0
        assert sorted({m for m, _ in proxy.requests}) == ["HEAD"], "one HEAD per image, nothing else"
        assert len(proxy.requests) == len(names)


def test_blob_upload_failing_once_is_retried(upstream_images, registry_factory):
    upstream, up_client, names = upstream_images
    local = registry_factory("local")
    with run_proxy(local.url) as proxy:
        proxy.fail(lambda method, path: method == "PUT" and "/blobs/uploads/" in path, times=1, status=500)
        local_client = RegistryClient(proxy.address, tls="http", backoff=0.01)
        job = CopyJob(ImageRef.parse(f"{upstream.address}/{names[0]}:current-tripleo"),
                      ImageRef.parse(f"{proxy.address}/{names[0]}:current-tripleo"))
        mirror = Mirror(_clients(up_client, local_client))
        [result] = mirror.copy_all([job])
        assert result.status == MIRRORED
        assert proxy.count("PUT", "/blobs/uploads/") == 4 + 1, "config and 3 layers, the first sent twice"
        assert local_client.head_manifest(names[0], "current-tripleo")[0] == result.digest


def test_missing_upstream_image_fails_alone(upstream_images, registry):
    upstream, up_client, names = upstream_images
    local_client = RegistryClient(registry.address, tls="http")
    jobs = _jobs(upstream, registry, [names[0], "tripleomaster/absent"])
    results = Mirror(_clients(up_client, local_client)).copy_all(jobs)
    assert [r.status for r in results] == [MIRRORED, FAILED]
    assert "tripleomaster/absent" in results[1].detail and "not found upstream" in results[1].detail


def test_engine_built_images_sharing_a_base_mirror_with_their_digests(docker_client, base_image, registry_factory):
    upstream, local = registry_factory("upstream"), registry_factory("local")
    try:
        _mirror_engine_images(docker_client, base_image, upstream, local)
    finally:
        from registry_support import forget_images

        forget_images(docker_client, (upstream.address, local.address))


def _mirror_engine_images(docker_client, base_image, upstream, local):
    names = []
    for i in range(3):
        dockerfile = f"FROM {base_image}\nRUN echo shared > /shared\nRUN head -c {20000 + i} /dev/urandom > /own{i}\n"
        tag = f"{upstream.address}/tripleomaster/centos-binary-built{i}:current-tripleo"
        docker_client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, network_mode="host", rm=True)
        for line in docker_client.api.push(tag.rsplit(":", 1)[0], "current-tripleo", stream=True, decode=True):
            assert "error" not in line, line
        names.append(f"tripleomaster/centos-binary-built{i}")
    up_client = RegistryClient(upstream.address, tls="http")
    local_client = RegistryClient(local.address, tls="http")
    mirror = Mirror(_clients(up_client, local_client), jobs=3)
    results = mirror.copy_all(_jobs(upstream, local, names))
    assert [r.status for r in results] == [MIRRORED] * 3
    assert mirror.stats.bytes_sent == _unique_blob_bytes(up_client, names)
    for name in names:
        assert local_client.head_manifest(name, "current-tripleo") == up_client.head_manifest(name, "current-tripleo")
    # The engine pulls the mirrored image back: the copy is complete and valid.
    pulled = docker_client.images.pull(f"{local.address}/{names[0]}", tag="current-tripleo")
    assert pulled.attrs["RepoDigests"]


def test_mirror_from_a_registry_that_needs_a_token(registry_factory, tmp_path):
    from apex_tools.registry.auth import Credentials
    from registry_support import run_token_server

    with run_token_server(tmp_path / "tokens", {"apex": "pw"}) as tokens:
        upstream = registry_factory("upstream", tokens.registry_config())
        local = registry_factory("local")
        pusher = RegistryClient(upstream.address, tls="http", credentials=Credentials("apex", "pw"))
        base = layer_blob("base", 5000)
        names = [f"tripleomaster/svc{i}" for i in range(3)]
        for name in names:
            push_image(pusher, name, "current-tripleo", [base, layer_blob(name, 700)])
        # Mirroring pulls anonymously (pull tokens), as from a public upstream.
        anonymous = RegistryClient(upstream.address, tls="http")
        local_client = RegistryClient(local.address, tls="http")
        results = Mirror(_clients(anonymous, local_client), jobs=3).copy_all(_jobs(upstream, local, names))
        assert [r.status for r in results] == [MIRRORED] * 3
        assert all(s.endswith(":pull") for s in tokens.issued[-3:])
        for name in names:
            assert local_client.head_manifest(name, "current-tripleo") == pusher.head_manifest(name, "current-tripleo")


def test_a_job_that_knows_both_digests_asks_nothing():
    from apex_tools.core.reference import ImageRef
    from apex_tools.registry.mirror import ALREADY_THERE, CopyJob, Mirror

    def no_requests(host: str):
        raise AssertionError(f"the mirror asked {host} again")

    digest = "sha256:" + "ab" * 32
    job = CopyJob(ImageRef.parse("127.0.0.1:1/a/b:t"), ImageRef.parse("127.0.0.1:2/a/b:t"),
                  source_digest=digest, target_digest=digest, target_checked=True)
    [result] = Mirror(lambda host: type("C", (), {"__getattr__": lambda self, name: no_requests(host)})()).copy_all([job])
    assert (result.status, result.digest) == (ALREADY_THERE, digest)


def test_cold_run_round_trips_and_a_blob_already_there_is_not_sent(upstream_images, registry_factory):
    """Cold: the source manifest is fetched without a HEAD; no blob is HEADed on the target (the
    POST that would mount it from the repository itself answers 201 when it is there)."""
    upstream, up_client, names = upstream_images
    local = registry_factory("local")
    name = names[0]
    manifest = up_client.get_manifest(name, "current-tripleo")
    config = manifest.blobs()[0]
    # The target repository already holds the config blob (say, from an earlier, broken run).
    RegistryClient(local.address, tls="http").upload_blob(
        name, config["digest"], up_client.get_blob(name, config["digest"]), config["size"])
    with run_proxy(upstream.url) as up_proxy, run_proxy(local.url) as proxy:
        src = RegistryClient(up_proxy.address, tls="http")
        dst = RegistryClient(proxy.address, tls="http")
        jobs = [CopyJob(ImageRef.parse(f"{up_proxy.address}/{n}:current-tripleo"),
                        ImageRef.parse(f"{proxy.address}/{n}:current-tripleo")) for n in names[:6]]
        mirror = Mirror(_clients(src, dst), jobs=4)
        results = mirror.copy_all(jobs)
        assert [r.status for r in results] == [MIRRORED] * 6
        assert mirror.stats.blobs_present == 1
        assert mirror.stats.bytes_sent == _unique_blob_bytes(up_client, names[:6]) - config["size"]
        assert up_proxy.count("HEAD", "/") == 0, "the target lacks the tags: GET the manifest, no HEAD"
        assert up_proxy.count("GET", "/manifests/") == 6
        assert proxy.count("HEAD", "/blobs/") == 0
        assert proxy.count("HEAD", "/manifests/") == 6
        blobs = sum(len(up_client.get_manifest(n, "current-tripleo").blobs()) for n in names[:6])
        assert proxy.count("POST", "/blobs/uploads/") == blobs, "one POST per blob and repository"
        # 2 base layers + 6 own layers + 6 configs, less the config already there; and 6 manifests.
        assert proxy.count("PUT", "/blobs/uploads/") == 2 + 6 + 6 - 1
        assert proxy.count("PUT", "/manifests/") == 6
        assert up_proxy.count("GET", "/blobs/") == 2 + 6 + 6 - 1


def test_a_large_blob_streams_through_whole_and_is_sent_once(registry_factory):
    upstream, local = registry_factory("upstream"), registry_factory("local")
    up_client = RegistryClient(upstream.address, tls="http")
    big = (os.urandom(9 << 20), "unused")
    names = ["apex/big0", "apex/big1"]
    for name in names:
        push_image(up_client, name, "current-tripleo", [big])
    local_client = RegistryClient(local.address, tls="http")
    mirror = Mirror(_clients(up_client, local_client), jobs=2)
    results = mirror.copy_all(_jobs(upstream, local, names))
    assert [r.status for r in results] == [MIRRORED] * 2
    assert mirror.stats.bytes_sent == _unique_blob_bytes(up_client, names)
    assert (mirror.stats.blobs_sent, mirror.stats.blobs_mounted) == (2, 2), "sent once, mounted in the other"
    layer = local_client.get_manifest(names[1], "current-tripleo").blobs()[1]["digest"]
    assert local_client.get_blob(names[1], layer) == big[0]
