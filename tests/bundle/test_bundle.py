"""The bundle's library against real registries: export to a folder or a tar, import into an
empty registry, digests kept (checked by skopeo too), tamper, interruption and resume,
incremental and differential exports."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
from collections.abc import Callable
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
from apex_tools.core.reference import ImageRef
from apex_tools.http.filecache import cached_validators
from apex_tools.registry.client import DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, RegistryClient

from conftest import need
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


def do_import(bundle: Path, local: RegistryClient, dest: Path, tar: bool = False,
              on_bytes: Callable[[int], None] | None = None) -> tuple[Any, list[Any]]:
    reader = open_bundle(None, bundle) if tar else open_bundle(bundle, None)
    try:
        plan = plan_import(reader.document, local, lambda f: dest / f["path"], 2)
        return plan, load_bundle(reader, plan, local, lambda f: dest / f["path"], on_bytes)
    finally:
        reader.close()


def assert_imported(local: RegistryClient, digests: dict[str, str]) -> None:
    """Every image is in ``local`` under its tag, at upstream's digest."""
    for ref, digest in digests.items():
        repo, tag = ref.rsplit(":", 1)
        assert (local.head_manifest(repo, tag) or ("absent",))[0] == digest, ref


@pytest.fixture
def two(registry_factory: Callable[..., Any]) -> tuple[RegistryClient, RegistryClient]:
    return (RegistryClient(registry_factory("up").address, "http"), RegistryClient(registry_factory("local").address,
                                                                                   "http"))


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


def test_skopeo_reads_the_layout_and_sees_upstreams_digest(two, tmp_path: Path) -> None:
    need(shutil.which("skopeo") is not None, "skopeo (Debian package skopeo)")
    up, _ = two
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

step, after, host, bundle, refs = sys.argv[2], int(sys.argv[3]), sys.argv[4], Path(sys.argv[5]), sys.argv[6:]
client = RegistryClient(host, "http")
if step == "export":
    test_bundle.export(client, refs, [], DirWriter(bundle), on_bytes=on_bytes)
else:
    test_bundle.do_import(bundle, client, bundle.parent / "cache", on_bytes=on_bytes)
"""


def killed(step: str, after: int, host: str, bundle: Path, refs: list[str] = ()) -> None:
    """``export`` or ``import`` in another process that SIGKILLs itself after ``after`` blobs: no
    cleanup runs, as when a run is killed."""
    tests = str(Path(__file__).resolve().parents[1])
    proc = subprocess.run([sys.executable, "-c", KILLED_CHILD, tests, step, str(after), host, str(bundle), *refs],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]


def test_a_killed_export_and_import_resume_by_digest(two, tmp_path: Path) -> None:
    up, local = two
    digests = seed(up)
    refs = sorted(digests)
    bundle = tmp_path / "bundle"
    killed("export", 5, up.host, bundle, refs)
    assert not (bundle / BUNDLE_FILE).exists()  # incomplete: no import would take it
    plan, count, _ = export(up, refs, [], DirWriter(bundle))
    assert 0 < count < len(plan.blobs)  # only the rest
    assert not [p for p in (bundle / "blobs/sha256").iterdir() if p.name.startswith(".")]  # no torn leftovers

    # 14 of the 20 blobs: the 7 manifests (only read) may come first, so at least 7 uploads are in.
    killed("import", 14, local.host, bundle)
    resumed, results = do_import(bundle, local, tmp_path / "cache")
    assert 0 < len(resumed.needed) < len(plan.blobs)
    assert {r.status for r in results} == {LOADED}
    assert_imported(local, digests)


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
