"""push-registry's fast path: a RegistryClient writing into the storage of the registry its work
dir started (``RegistryClient.storage``), checked against that registry's own API and skopeo."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from apex_tools.bundle.storage import RegistryStorage, local_storage
from apex_tools.core.errors import ApexError
from apex_tools.registry.client import DOCKER_MANIFEST, OCI_INDEX, Manifest, RegistryClient, RegistryHTTPError, \
    sha256_digest
from apex_tools.registry.server import ensure_local_registry, stop_local_registry
from conftest import free_port, need

CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"
LAYER_TYPE = "application/vnd.docker.image.rootfs.diff.tar.gzip"


@pytest.fixture
def ours(tmp_path: Path) -> Iterator[tuple[RegistryClient, RegistryClient, RegistryStorage]]:
    """The registry a work dir started: a client writing into its storage, one asking its API only."""
    need(shutil.which("docker-registry") is not None, "docker-registry (Debian package docker-registry)")
    address = f"127.0.0.1:{free_port()}"
    api, direct = RegistryClient(address, "http"), RegistryClient(address, "http")
    work = tmp_path / "work"
    try:
        ensure_local_registry(address, work, api)
        storage, why = local_storage(address, work, api)
        assert storage is not None, why
        direct.storage = storage
        yield direct, api, storage
    finally:
        stop_local_registry(work)


def _image(client: RegistryClient, repository: str, text: str, push_blobs: bool = True) -> Manifest:
    """A one-layer image manifest whose blobs ``client`` pushed (unless not ``push_blobs``)."""
    layer, config = f"layer {text}".encode(), json.dumps({"os": "linux", "text": text}).encode()
    if push_blobs:
        for blob in (layer, config):
            client.put_blob(repository, sha256_digest(blob), blob)
    raw = json.dumps({
        "schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": CONFIG_TYPE, "size": len(config), "digest": sha256_digest(config)},
        "layers": [{"mediaType": LAYER_TYPE, "size": len(layer), "digest": sha256_digest(layer)}],
    }).encode()
    return Manifest(DOCKER_MANIFEST, sha256_digest(raw), raw)


def test_what_is_written_into_the_storage_is_what_the_registry_serves(ours) -> None:
    direct, api, storage = ours
    image = _image(direct, "apex/svc", "one")
    assert direct.put_manifest("apex/svc", "v1", image) == image.digest
    index_raw = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": DOCKER_MANIFEST, "size": len(image.raw), "digest": image.digest,
         "platform": {"architecture": "amd64", "os": "linux"}}]}).encode()
    index = Manifest(OCI_INDEX, sha256_digest(index_raw), index_raw)
    direct.put_manifest("apex/svc", "multi", index)
    storage.flush()

    assert api.head_manifest("apex/svc", "v1") == (image.digest, DOCKER_MANIFEST)
    assert api.get_manifest("apex/svc", image.digest).raw == image.raw
    assert api.get_manifest("apex/svc", "multi").raw == index_raw
    assert sorted(api.tags("apex/svc")) == ["multi", "v1"]
    for blob in image.blobs():
        assert api.has_blob("apex/svc", blob["digest"]) == blob["size"]
        assert sha256_digest(api.get_blob("apex/svc", blob["digest"])) == blob["digest"]
    # The storage answers as the API does, absent included.
    assert direct.head_manifest("apex/svc", "v1") == api.head_manifest("apex/svc", "v1")
    assert direct.head_manifest("apex/svc", "v2") is None and api.head_manifest("apex/svc", "v2") is None
    assert direct.get_blob("apex/svc", image.blobs()[0]["digest"]) == api.get_blob("apex/svc", image.blobs()[0]["digest"])
    with pytest.raises(RegistryHTTPError) as err:
        direct.get_manifest("apex/svc", "v2")
    assert err.value.status == 404
    # A second repository mounts the blobs (links only) and is served too.
    for blob in image.blobs():
        assert direct.mount_blob("apex/other", blob["digest"], "apex/svc") is None
    direct.put_manifest("apex/other", "v1", image)
    assert api.head_manifest("apex/other", "v1") == (image.digest, DOCKER_MANIFEST)

    if shutil.which("skopeo"):  # a client we did not write reads it back, digests checked
        raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{api.host}/apex/svc:v1"],
                             check=True, capture_output=True).stdout
        assert raw == image.raw
        subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{api.host}/apex/svc:v1",
                        f"dir:{storage.root.parent / 'copied'}"], check=True, capture_output=True)


def test_a_manifest_naming_what_the_repository_lacks_is_refused_and_nothing_is_tagged(ours) -> None:
    direct, api, _ = ours
    image = _image(direct, "apex/svc", "two", push_blobs=False)
    with pytest.raises(RegistryHTTPError) as err:
        direct.put_manifest("apex/svc", "v1", image)
    assert err.value.status == 400
    assert all(b["digest"] in err.value.message for b in image.blobs())
    assert api.head_manifest("apex/svc", "v1") is None
    # Blobs in another repository only: still refused here (the registry checks the repository's links).
    _image(direct, "apex/elsewhere", "two")
    with pytest.raises(RegistryHTTPError):
        direct.put_manifest("apex/svc", "v1", image)


def test_hostile_names_never_reach_a_path(ours) -> None:
    direct, _, storage = ours
    image = _image(direct, "apex/svc", "three")
    for repository, tag in (("apex/../../etc", "v1"), ("apex/svc", "../../x"), ("apex/svc", "a/b"), ("/abs", "v1")):
        with pytest.raises(ApexError):
            direct.put_manifest(repository, tag, image)
    assert not (storage.v2 / "repositories" / "etc").exists()
    assert sorted(p.name for p in (storage.v2 / "repositories" / "apex").iterdir()) == ["svc"]


def test_threads_writing_the_same_small_blob_never_see_it_torn(ours) -> None:
    """Every signature's config is the same two bytes: many threads write it at once, into many
    repositories; none fails, the blob is whole, no temporary file is left."""
    direct, api, storage = ours
    blob = b"{}"
    digest = sha256_digest(blob)
    errors: list[BaseException] = []
    start = threading.Barrier(16)

    def write(n: int) -> None:
        try:
            start.wait()
            for round_ in range(5):
                direct.put_blob(f"apex/r{(n + round_) % 6}", digest, blob)
                assert storage.blob_path(digest).read_bytes() == blob
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert [api.has_blob(f"apex/r{n}", digest) for n in range(6)] == [2] * 6
    assert list(storage.v2.rglob("*.tmp")) == []


def test_a_link_lost_or_emptied_by_a_crash_reads_as_absent_and_is_written_again(ours) -> None:
    direct, api, storage = ours
    image = _image(direct, "apex/svc", "four")
    direct.put_manifest("apex/svc", "v1", image)
    current = storage.v2 / "repositories/apex/svc/_manifests/tags/v1/current/link"
    current.write_text("")  # what an unsynced link may hold after a crash
    assert direct.head_manifest("apex/svc", "v1") is None
    direct.put_manifest("apex/svc", "v1", image)
    assert api.head_manifest("apex/svc", "v1") == (image.digest, DOCKER_MANIFEST)
    layer = image.blobs()[1]["digest"]
    storage.link_path("apex/svc", layer).unlink()
    assert direct.has_blob("apex/svc", layer) is None
    assert direct.mount_blob("apex/svc", layer, "apex/svc") is None  # the data is there: linked again
    assert api.has_blob("apex/svc", layer) == image.blobs()[1]["size"]
