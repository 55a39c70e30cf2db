"""The bundle's library against real registries: export to a folder or a tar, import into an
empty registry, digests kept (checked by skopeo too), tamper, interruption and resume,
incremental and differential exports."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from apex_tools.bundle.export import DISK_IMAGE, FileItem, file_digest, look_images, plan_bundle, write_bundle
from apex_tools.bundle.layout import (
    BUNDLE_FILE,
    INDEX_FILE,
    REF_NAME,
    DirWriter,
    IntegrityError,
    TarWriter,
    blob_name,
    open_bundle,
    read_document,
)
from apex_tools.bundle.load import FAILED, LOADED, load_bundle, plan_import
from apex_tools.bundle.storage import RegistryStorage, local_storage
from apex_tools.core.reference import ImageRef
from apex_tools.http.filecache import cached_validators
from apex_tools.registry.client import DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, RegistryClient
from apex_tools.registry.server import ensure_local_registry, stop_local_registry

from conftest import free_port, need
from registry_support import layer_blob, push_image, push_index

BASE = layer_blob("base.bin", 300_000, "base")


def seed(client: RegistryClient) -> dict[str, str]:
    """Three Docker images sharing a base layer, an OCI image and an OCI index: ref → digest."""
    out = {}
    for name in ("nova-api", "nova-compute", "glance-api"):
        out[f"tripleo/{name}:current"] = push_image(client, f"tripleo/{name}", "current",
                                                    [BASE, layer_blob(f"{name}.bin", 40_000)]).digest
    out["tripleo/keystone:current"] = push_image(client, "tripleo/keystone", "current",
                                                 [BASE, layer_blob("ks.bin", 20_000)], oci=True).digest
    children = [push_image(client, "tripleo/multi", f"p{n}", [layer_blob(f"m{n}", 5_000)], oci=True) for n in (1, 2)]
    out["tripleo/multi:current"] = push_index(client, "tripleo/multi", "current", children, oci=True).digest
    return out


def export(client: RegistryClient, refs: list[str], files: list[FileItem], writer: Any,
           base: tuple[dict[str, Any], str] | None = None, **kw: Any) -> tuple[Any, int, int]:
    items = look_images([ImageRef.parse(f"{client.host}/{r}") for r in refs], lambda _: client, 2)
    plan = plan_bundle(items, files, lambda _: client, {"os_version": "master", "patches": []}, base)
    count, size, _ = write_bundle(plan, writer, 2, **kw)
    return plan, count, size


def disk_file(tmp_path: Path) -> FileItem:
    path = tmp_path / "src" / "overcloud-full.tar"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"disk image " * 5000)
    record = {"url": "http://rdo.example/overcloud-full.tar", "etag": '"e1"', "last_modified": "", "size":
              path.stat().st_size, "digests": {"md5": "0" * 32}}
    return FileItem(DISK_IMAGE, "overcloud-full.tar", path, file_digest(path), path.stat().st_size, record)


class Local(RegistryClient):
    """The importing side's registry; ``work_dir`` set when it is the one that work dir started
    (then import writes blobs straight into its storage)."""

    work_dir: Path | None = None

    def direct_storage(self) -> RegistryStorage | None:
        if self.work_dir is None:
            return None
        storage, why = local_storage(self.host, self.work_dir, self)
        assert storage is not None, why  # never a silent fall back to the API in the direct tests
        return storage


def do_import(bundle: Path, local: Local, dest: Path, tar: bool = False,
              on_bytes: Callable[[int], None] | None = None) -> tuple[Any, list[Any]]:
    reader = open_bundle(None, bundle) if tar else open_bundle(bundle, None)
    try:
        plan = plan_import(reader.document, local, lambda f: dest / f["path"], 2)
        return plan, load_bundle(reader, plan, local, lambda f: dest / f["path"], on_bytes,
                                 storage=local.direct_storage())
    finally:
        reader.close()


@contextlib.contextmanager
def our_registry(work_dir: Path) -> Iterator[Local]:
    """The registry apex starts for a work dir (``ensure_local_registry``), on a free loopback port."""
    need(shutil.which("docker-registry") is not None, "docker-registry (Debian package docker-registry)")
    local = Local(f"127.0.0.1:{free_port()}", "http")
    local.work_dir = work_dir
    try:
        ensure_local_registry(local.host, work_dir, local)
        yield local
    finally:
        stop_local_registry(work_dir)


def blob_files(storage: RegistryStorage) -> list[Path]:
    return sorted((storage.v2 / "blobs").rglob("*")) if (storage.v2 / "blobs").exists() else []


def assert_no_torn_blob(storage: RegistryStorage) -> None:
    """Every ``data`` in the registry's storage hashes to its folder's name; no temporary files left."""
    for path in blob_files(storage):
        if path.is_file():
            assert path.name == "data", path
            assert file_digest(path) == f"sha256:{path.parent.name}", path
    assert list(storage.v2.rglob("*.tmp")) == []


def assert_imported(local: RegistryClient, digests: dict[str, str]) -> None:
    """Every image is in ``local`` under its tag, at upstream's digest."""
    for ref, digest in digests.items():
        repo, tag = ref.rsplit(":", 1)
        assert (local.head_manifest(repo, tag) or ("absent",))[0] == digest, ref


@pytest.fixture(params=["api", "direct"])
def two(request: pytest.FixtureRequest, registry_factory: Callable[..., Any],
        tmp_path: Path) -> Iterator[tuple[RegistryClient, Local]]:
    """Upstream, and the importing side's registry: any registry (blobs through its API) or the
    one a work dir started (blobs written straight into its storage)."""
    up = RegistryClient(registry_factory("up").address, "http")
    if request.param == "api":
        yield up, Local(registry_factory("local").address, "http")
        return
    with our_registry(tmp_path / "work") as local:
        yield up, local


def test_folder_round_trip_keeps_every_digest_and_stores_each_blob_once(two, tmp_path: Path) -> None:
    up, local = two
    digests = seed(up)
    bundle = tmp_path / "bundle"
    disk = disk_file(tmp_path)
    plan, count, _ = export(up, sorted(digests), [disk], DirWriter(bundle))
    index = json.loads((bundle / INDEX_FILE).read_text())
    named = {m["annotations"][REF_NAME]: m for m in index["manifests"]}
    assert {r: m["digest"] for r, m in named.items()} == digests
    assert named["tripleo/nova-api:current"]["mediaType"] == DOCKER_MANIFEST  # never converted
    assert named["tripleo/keystone:current"]["mediaType"] == OCI_MANIFEST
    assert named["tripleo/multi:current"]["mediaType"] == OCI_INDEX
    blobs = list((bundle / "blobs/sha256").iterdir())
    assert len(blobs) == count == len(plan.blobs)
    assert sum(1 for b in blobs if f"sha256:{b.name}" == BASE_DIGEST) == 1  # the shared base once
    # The bundle manifest lists every other file with its sha256 and size.
    document = json.loads((bundle / BUNDLE_FILE).read_text())
    for name, entry in document["contents"].items():
        assert file_digest(bundle / name) == entry["sha256"] and (bundle / name).stat().st_size == entry["size"]

    dest = tmp_path / "cache"
    import_plan, results = do_import(bundle, local, dest)
    assert {r.status for r in results} == {LOADED}, results
    assert_imported(local, digests)
    assert (dest / "overcloud-full.tar").read_bytes() == disk.source.read_bytes()
    cached = cached_validators(dest / "overcloud-full.tar")  # as fetch-images leaves it: --no-fetch uses it
    assert cached is not None and cached.etag == '"e1"' and cached.digests["sha256"] == disk.digest[7:]
    again, _ = do_import(bundle, local, dest)
    assert again.nothing_to_do and again.skipped_images == len(digests)
    # A second export to the same folder writes nothing.
    _, count2, _ = export(up, sorted(digests), [disk], DirWriter(bundle))
    assert count2 == 0


BASE_DIGEST = "sha256:" + __import__("hashlib").sha256(BASE[0]).hexdigest()


def test_skopeo_reads_the_layout_and_sees_upstreams_digest(registry_factory, tmp_path: Path) -> None:
    need(shutil.which("skopeo") is not None, "skopeo (Debian package skopeo)")
    up = RegistryClient(registry_factory("up").address, "http")
    digests = seed(up)
    bundle = tmp_path / "bundle"
    export(up, sorted(digests), [], DirWriter(bundle))
    # Debian's skopeo 1.9.3 looks a ref.name up among OCI-typed descriptors only (Docker-typed
    # ones, kept as such so their digests stay upstream's, are skipped by that version's lookup).
    for ref in ("tripleo/keystone:current", "tripleo/multi:current"):
        out = subprocess.run(["skopeo", "inspect", f"oci:{bundle}:{ref}"], capture_output=True, text=True,
                             check=True, timeout=180)
        assert json.loads(out.stdout)["Digest"] == digests[ref], out.stdout


def test_tar_is_streamed_and_imports_the_same(two, tmp_path: Path) -> None:
    up, local = two
    digests = seed(up)
    tar = tmp_path / "bundle.tar"
    with tar.open("wb") as handle:
        writer = TarWriter(handle)
        plan, _, size = export(up, sorted(digests), [disk_file(tmp_path)], writer)
        writer.close()
    assert tar.stat().st_size < size * 1.05 + 60_000  # blobs once, tar headers only on top
    assert read_document(tar)[1] == plan.id
    _, results = do_import(tar, local, tmp_path / "cache", tar=True)
    assert [r for r in results if r.status != LOADED] == []
    assert_imported(local, digests)


@pytest.mark.parametrize("as_tar", [False, True], ids=["folder", "tar"])
def test_a_flipped_byte_fails_that_item_naming_both_digests_and_imports_nothing_of_it(two, tmp_path: Path,
                                                                                    as_tar: bool) -> None:
    up, local = two
    digests = seed(up)
    bundle = tmp_path / ("bundle.tar" if as_tar else "bundle")
    manifest = json.loads(up.get_manifest("tripleo/glance-api", "current").raw)
    own = manifest["layers"][1]["digest"]  # glance-api's own layer
    if as_tar:
        with bundle.open("wb") as handle:
            writer = TarWriter(handle)
            export(up, sorted(digests), [], writer)
            writer.close()
        with tarfile.open(bundle) as tar:
            member = tar.getmember(blob_name(own))
            path, offset = bundle, member.offset_data + member.size // 2
    else:
        export(up, sorted(digests), [], DirWriter(bundle))
        path = bundle / blob_name(own)
        offset = path.stat().st_size // 2
    with path.open("r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))
    _, results = do_import(bundle, local, tmp_path / "cache", tar=as_tar)
    failed = {r.name: r for r in results if r.status == FAILED}
    assert list(failed) == ["tripleo/glance-api:current"]
    error = failed["tripleo/glance-api:current"].error
    assert isinstance(error, IntegrityError)
    assert error.expected == own and error.actual.startswith("sha256:") and error.actual != own
    assert "tripleo/glance-api:current" in error.message and own in error.message
    assert local.head_manifest("tripleo/glance-api", "current") is None
    assert local.has_blob("tripleo/glance-api", own) is None
    assert local.head_manifest("tripleo/nova-api", "current")[0] == digests["tripleo/nova-api:current"]
    if (storage := local.direct_storage()) is not None:  # nothing of it in the registry's storage either
        assert not storage.blob_path(own).parent.exists()
        assert not storage.link_path("tripleo/glance-api", own).exists()
        assert_no_torn_blob(storage)


KILLED_CHILD = """
import os, signal, sys
from pathlib import Path
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/bundle"]
import test_bundle
from apex_tools.bundle.layout import DirWriter
from apex_tools.registry.client import RegistryClient

done = []

def on_bytes(_):
    done.append(1)
    if len(done) == after:  # mid-run: other workers are cut off mid-blob
        os.kill(os.getpid(), signal.SIGKILL)

step, after, host, work, bundle, refs = (sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], Path(sys.argv[6]),
                                        sys.argv[7:])
client = test_bundle.Local(host, "http")
client.work_dir = Path(work) if work else None
if step == "export":
    test_bundle.export(client, refs, [], DirWriter(bundle), on_bytes=on_bytes)
else:
    test_bundle.do_import(bundle, client, bundle.parent / "cache", on_bytes=on_bytes)
"""


def killed(step: str, after: int, client: RegistryClient, bundle: Path, refs: list[str] = ()) -> None:
    """``export`` or ``import`` in another process that SIGKILLs itself after ``after`` blobs: no
    cleanup runs, as when a run is killed."""
    tests = str(Path(__file__).resolve().parents[1])
    work = str(getattr(client, "work_dir", None) or "")
    proc = subprocess.run([sys.executable, "-c", KILLED_CHILD, tests, step, str(after), client.host, work,
                           str(bundle), *refs], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]


def test_a_killed_export_and_import_resume_by_digest(two, tmp_path: Path) -> None:
    up, local = two
    digests = seed(up)
    refs = sorted(digests)
    bundle = tmp_path / "bundle"
    killed("export", 5, up, bundle, refs)
    assert not (bundle / BUNDLE_FILE).exists()  # incomplete: no import would take it
    plan, count, _ = export(up, refs, [], DirWriter(bundle))
    assert 0 < count < len(plan.blobs)  # only the rest
    assert not [p for p in (bundle / "blobs/sha256").iterdir() if p.name.startswith(".")]  # no torn leftovers

    # 14 of the 20 blobs: the 7 manifests (only read) may come first, so at least 7 uploads are in.
    killed("import", 14, local, bundle)
    if (storage := local.direct_storage()) is not None:
        # Killed mid-blob: temporary files may be left beside a blob, never a torn ``data``.
        for path in blob_files(storage):
            if path.is_file() and path.name == "data":
                assert file_digest(path) == f"sha256:{path.parent.name}", path
    resumed, results = do_import(bundle, local, tmp_path / "cache")
    assert 0 < len(resumed.needed) < len(plan.blobs)
    assert {r.status for r in results} == {LOADED}
    assert_imported(local, digests)
    if storage is not None:
        assert_no_torn_blob(storage)  # and the killed run's temporary files are gone


def test_incremental_and_differential_exports_carry_only_new_blobs(two, tmp_path: Path) -> None:
    up, local = two
    digests = seed(up)
    refs = sorted(digests)
    old = tmp_path / "old"
    export(up, refs, [], DirWriter(old))
    # Upstream moves one tag: one new layer, a new config and manifest.
    new_layer = layer_blob("nova-api-v2.bin", 30_000)
    push_image(up, "tripleo/nova-api", "current", [BASE, new_layer])
    _, count, _ = export(up, refs, [], DirWriter(old))
    assert count == 3  # layer, config, manifest
    diff = tmp_path / "diff"
    first = tmp_path / "first"
    shutil.copytree(old, first)
    # A differential against the first bundle: just what changed since.
    push_image(up, "tripleo/nova-compute", "current", [BASE, layer_blob("nova-compute-v2.bin", 30_000)])
    dplan, dcount, _ = export(up, refs, [], DirWriter(diff), base=read_document(first))
    assert dcount == 3 and len(list((diff / "blobs/sha256").iterdir())) == 3
    assert dplan.document["base"]["id"] == read_document(first)[1]
    # Without its base the other side refuses it, naming the base bundle.
    reader = open_bundle(diff, None)
    try:
        missing = plan_import(reader.document, local, lambda f: tmp_path / f["path"]).missing
    finally:
        reader.close()
    assert missing
    do_import(first, local, tmp_path / "cache")
    _, results = do_import(diff, local, tmp_path / "cache")
    assert {r.status for r in results} == {LOADED}
    assert local.head_manifest("tripleo/nova-compute", "current")[0] == up.head_manifest("tripleo/nova-compute",
                                                                                          "current")[0]


def test_export_carries_each_gerrit_patch_with_its_identity_and_the_cache_that_answers_it(tmp_path: Path) -> None:
    from apex_tools.core.config import Layer, resolve
    from apex_tools.core.errors import BundleError
    from apex_tools.core.run import RunContext
    from apex_tools.targets.bundle_export import _patches

    work = tmp_path / "work"
    run = RunContext(resolve([Layer("test", {"work_dir": str(work), "image_dir": str(tmp_path / "img")})]).options)
    nova = {"side": "overcloud", "project": "openstack/nova", "change_id": "I0123", "branch": "stable/queens",
            "revision": "4f2c", "status": "NEW", "patch_set": 3, "commit": "4f2c"}
    local = {"side": "overcloud", "project": "openstack/puppet-tripleo", "change_id": "/p/x.patch", "branch": "",
             "revision": "sha256:0011", "status": "LOCAL"}
    run.state.save("patch-containers", "sha256:fp", data={"patches": [{**nova, "parts": []}, {**local, "parts": []}]})
    wanted = ["cache/gerrit/changes/openstack%2Fnova~stable%2Fqueens~I0123.json", "cache/gerrit/patches/4f2c.patch"]
    for rel in wanted[:1]:
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_text("{}")
    with pytest.raises(BundleError, match="4f2c.patch"):
        _patches(run)  # a cache without the patch text cannot be carried
    (work / wanted[1]).parent.mkdir(parents=True)
    (work / wanted[1]).write_text("--- a\n+++ b\n")
    identities, files = _patches(run)
    # Identity of every patch (a Gerrit one with its patch set and commit), local ones by their sha256.
    assert identities == [nova, local]
    assert sorted(f.path for f in files) == wanted
    assert all(f.digest == file_digest(work / f.path) for f in files)


# -- the direct write into the local registry's storage ------------------------------------


def test_a_direct_import_is_served_byte_identical_to_a_client_we_did_not_write(registry_factory,
                                                                              tmp_path: Path) -> None:
    need(shutil.which("skopeo") is not None, "skopeo (Debian package skopeo)")
    up = RegistryClient(registry_factory("up").address, "http")
    digests = seed(up)
    bundle = tmp_path / "bundle"
    export(up, sorted(digests), [], DirWriter(bundle))
    with our_registry(tmp_path / "work") as local:
        _, results = do_import(bundle, local, tmp_path / "cache")
        assert {r.status for r in results} == {LOADED}
        for ref in ("tripleo/nova-api:current", "tripleo/keystone:current"):
            out = subprocess.run(["skopeo", "inspect", "--tls-verify=false", f"docker://{local.host}/{ref}"],
                                 capture_output=True, text=True, check=True, timeout=180)
            assert json.loads(out.stdout)["Digest"] == digests[ref], out.stdout
            copy = tmp_path / ref.replace("/", "_")
            subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{local.host}/{ref}",
                            f"dir:{copy}"], capture_output=True, text=True, check=True, timeout=180)
            manifest = json.loads((copy / "manifest.json").read_bytes())
            wanted = [manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])]
            for digest in wanted:  # each blob as served, byte-identical to upstream's
                served = (copy / digest[7:]).read_bytes()
                with up.open_blob(ref.split(":")[0], digest) as response:
                    assert served == response.content, (ref, digest)
        again, _ = do_import(bundle, local, tmp_path / "cache")
        assert again.nothing_to_do and again.skipped_images == len(digests)


def test_a_blob_written_behind_the_running_registrys_back_is_found(tmp_path: Path) -> None:
    data = b"written behind its back\n" * 1000
    digest = "sha256:" + __import__("hashlib").sha256(data).hexdigest()
    with our_registry(tmp_path / "work") as local:
        assert local.has_blob("tripleo/late", digest) is None  # the registry has answered 404 for it
        storage = local.direct_storage()
        assert storage is not None
        assert storage.write_blob(digest, len(data), __import__("io").BytesIO(data), "late blob")
        storage.link("tripleo/late", digest, "late blob")
        assert local.has_blob("tripleo/late", digest) == len(data)
        with local.open_blob("tripleo/late", digest) as response:
            assert response.content == data
        # Already there: not read again.
        assert not storage.write_blob(digest, len(data), __import__("io").BytesIO(b""), "late blob")
        # The probe leaves nothing behind in the registry's storage, and touches nothing else.
        assert not (storage.v2 / "repositories" / "apex-storage-probe").exists()
        assert [p.parent.name for p in storage.v2.glob("blobs/sha256/*/*/data")] == [digest[7:]]
        storage.link("apex-storage-probe", digest, "a repository named like the probe's")
        assert local_storage(local.host, local.work_dir, local)[0] is not None
        assert local.has_blob("apex-storage-probe", digest) == len(data)


def test_import_falls_back_to_the_api_unless_the_registry_is_ours_and_sees_what_we_write(
        registry_factory, tmp_path: Path) -> None:
    other = registry_factory("other")  # a registry this work dir did not start
    client = RegistryClient(other.address, "http")
    work = tmp_path / "work"
    assert local_storage("192.0.2.1:8787", work, client)[0] is None  # not this machine's
    storage, why = local_storage(other.address, work, client)
    assert storage is None and "no registry config" in why
    with our_registry(work) as local:
        assert local_storage(local.host, work, local)[0] is not None
        assert local_storage(other.address, work, client) == (None, f"the registry this work dir configures serves "
                                                                    f"{local.host}, not {other.address}")
        config = work / "registry" / "config.yml"
        rendered = config.read_text()
        # A blob descriptor cache could hide what is written behind the registry's back.
        config.write_text(rendered.replace("storage:\n", "storage:\n  cache:\n    blobdescriptor: inmemory\n"))
        assert "does not write into directly" in local_storage(local.host, work, local)[1]
        # The registry serves another folder than the config says (as a registry container
        # without this work dir mounted would): the probe sees it, and nothing is left behind.
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        config.write_text(rendered.replace(str(work / "registry" / "data"), str(elsewhere)))
        storage, why = local_storage(local.host, work, local)
        assert storage is None and "does not serve" in why
        assert [p for p in elsewhere.rglob("*") if p.is_file()] == []
    assert local_storage(local.host, work, local)[0] is None  # stopped: not answering, not ours
