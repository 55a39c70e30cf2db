"""The native builder against real registries: the merged view (upper layers, whiteouts, opaque
folders, symlinked parents), the appended layer as an independent client (skopeo + umoci) reads it,
reproducible digests across two fresh registries, a failing patch that pushes nothing.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from apex_tools.core.errors import BuildError
from apex_tools.patching.apply import PatchStep, patch_paths
from apex_tools.registry.client import RegistryClient
from apex_tools.registry.mutate import BASE_DIGEST_LABEL, OPAQUE
from apex_tools.registry.native import LayerCache, NativeImage, build_native, push_built

from registry_support import digest_of, push_image, unpack

REPO = "apex/edge"


def tar_layer(entries: list[tuple]) -> tuple[bytes, str]:
    """A gzipped layer from (path, kind, payload, mode, uid, gid) rows: kind file|dir|link|hard; (blob, diff_id)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, kind, payload, mode, uid, gid in entries:
            info = tarfile.TarInfo(path)
            info.mode, info.uid, info.gid, info.mtime = mode, uid, gid, 1_600_000_000
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif kind in ("link", "hard"):
                info.type, info.linkname = (tarfile.SYMTYPE if kind == "link" else tarfile.LNKTYPE), payload
                tar.addfile(info)
            else:
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    data = raw.getvalue()
    return gzip.compress(data, mtime=0), digest_of(data)


def d(path, mode=0o755):
    return (path, "dir", b"", mode, 0, 0)


def f(path, body: bytes, mode=0o644, uid=0, gid=0):
    return (path, "file", body, mode, uid, gid)


# Bottom layer: the code under srv/real, reached through the link srv/link -> real (kolla's venv).
BOTTOM = [d("srv"), d("srv/real"), d("srv/real/pkg"), ("srv/link", "link", "real", 0o777, 0, 0),
          f("srv/real/pkg/a.py", b"old a\n", 0o640, 42, 43), f("srv/real/pkg/b.py", b"b v1\n"),
          f("srv/real/pkg/gone.py", b"going\n"), f("srv/real/pkg/keep.py", b"kept\n"),
          ("srv/real/pkg/hard.py", "hard", "srv/real/pkg/keep.py", 0o644, 0, 0),
          f("srv/real/pkg/ghost.py", b"ghost\n"), d("srv/real/pkg/__pycache__"),
          f("srv/real/pkg/__pycache__/a.cpython-39.pyc", b"\x00stale"), d("srv/opq"), f("srv/opq/x.py", b"hidden\n")]
# Middle: b.py overridden, ghost.py whited out, srv/opq made opaque (x.py hidden below).
MIDDLE = [d("srv"), d("srv/real"), d("srv/real/pkg"), f("srv/real/pkg/b.py", b"b v2\n"),
          f("srv/real/pkg/.wh.ghost.py", b""), d("srv/opq"), f(f"srv/opq/{OPAQUE}", b""), f("srv/opq/y.py", b"y\n")]
TOP = [d("etc"), f("etc/top", b"top v1\n")]

EDGE_PATCH = """\
--- a/pkg/a.py
+++ b/pkg/a.py
@@ -1 +1 @@
-old a
+new a
--- a/pkg/b.py
+++ b/pkg/b.py
@@ -1 +1 @@
-b v2
+b v3
--- a/pkg/gone.py
+++ /dev/null
@@ -1 +0,0 @@
-going
--- /dev/null
+++ b/pkg/new/added.py
@@ -0,0 +1 @@
+added
--- /dev/null
+++ b/pkg/ghost.py
@@ -0,0 +1 @@
+ghost is back
--- a/pkg/hard.py
+++ b/pkg/hard.py
@@ -1 +1 @@
-kept
+hard no more
"""
OPAQUE_PATCH = "--- /dev/null\n+++ b/x.py\n@@ -0,0 +1 @@\n+x again\n"
TOP_PATCH = "--- a/etc/top\n+++ b/etc/top\n@@ -1 +1 @@\n-top v1\n+top v2\n"


@pytest.fixture
def edge_base(registry_factory):
    """A registry holding the three-layer base; (client, base digest)."""
    registry = registry_factory("edge")
    client = RegistryClient(registry.address, tls="http")
    manifest = push_image(client, REPO, "base", [tar_layer(BOTTOM), tar_layer(MIDDLE), tar_layer(TOP)])
    return client, manifest.digest


def native(tmp_path: Path, name: str, *patches: tuple[str, str, str]) -> NativeImage:
    steps = []
    for n, (text, target, label) in enumerate(patches, 1):
        path = tmp_path / f"{n:02d}-{name}.patch"
        path.write_text(text)
        steps.append(PatchStep(path, target, 1, label))
    return NativeImage(name, tuple(steps), (("io.opnfv.apex.patched-by", "test"),))


def layer_members(blob: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as tar:
        return {m.name: m for m in tar.getmembers()}


@pytest.mark.parametrize(("text", "strip", "expected"), [
    ("--- a/x/y.py\t2020-01-01\n+++ b/x/y.py\n@@ -1 +1 @@\n-a\n+b\n", 1, ["x/y.py"]),
    ("--- /dev/null\n+++ b/new.py\n@@ -0,0 +1 @@\n+n\n", 1, ["new.py"]),
    ("--- a/old.py\n+++ /dev/null\n@@ -1 +0,0 @@\n-o\n", 1, ["old.py"]),
    ("--- a/z.py\n+++ b/z.py\n@@ -1,2 +1,2 @@\n--- not a header\n+++ nor this\n ctx\n", 1, ["z.py"]),
    ("--- x/q.py\n+++ x/q.py\n@@ -1 +1 @@\n-a\n+b\n", 0, ["x/q.py"]),
], ids=["modified", "added", "deleted", "hunk-lines-like-headers", "p0"])
def test_patch_paths_reads_headers_not_hunks(text, strip, expected):
    assert patch_paths(text, strip) == expected


def test_upper_layers_whiteouts_opaque_folders_and_symlinked_parents(edge_base, tmp_path):
    client, base = edge_base
    image = native(tmp_path, "edge", (EDGE_PATCH, "/srv/link", "edge fix"), (OPAQUE_PATCH, "/srv/opq", "opaque fix"))
    built = build_native(client, LayerCache(client), REPO, base, "upstream/apex/edge:base", image)
    members = layer_members(built.layer.blob)
    assert sorted(members) == [
        "srv/opq/x.py",
        "srv/real/pkg/.wh.gone.py",
        "srv/real/pkg/__pycache__/.wh.a.cpython-39.pyc",  # stale bytecode of the patched a.py
        "srv/real/pkg/a.py", "srv/real/pkg/b.py", "srv/real/pkg/ghost.py", "srv/real/pkg/hard.py",
        "srv/real/pkg/new", "srv/real/pkg/new/added.py",
    ], "real paths only (never the link), no parent folders but the new one"
    a = members["srv/real/pkg/a.py"]
    assert (a.uid, a.gid, a.mode, a.uname, a.gname) == (42, 43, 0o640, "", ""), "owner and mode kept"
    assert a.mtime == 1_600_000_001 == built.layer.mtime, "one fixed mtime, newer than the files replaced"
    assert members["srv/real/pkg/new"].isdir() and members["srv/real/pkg/ghost.py"].uid == 0
    assert members["srv/real/pkg/hard.py"].isreg(), "a patched hard link becomes a file of its own"

    config = json.loads(built.config)
    assert config["rootfs"]["diff_ids"][-1] == built.layer.diff_id and len(config["rootfs"]["diff_ids"]) == 4
    assert config["config"]["Labels"][BASE_DIGEST_LABEL] == base
    assert config["config"]["Labels"]["apex.test"] == "base", "the base's labels are kept"

    # An independent applier (skopeo to an OCI layout, umoci unpack) sees the patched tree.
    digests, uploads = push_built(client, [built], {"edge": ["patched"]})
    assert digests["edge"] == built.manifest.digest == client.head_manifest(REPO, "patched")[0]
    assert uploads == 2, "the layer and the config; the base's layers are already there"
    root = unpack(client.host, f"{REPO}:patched", tmp_path / "unpacked")
    pkg = root / "srv/real/pkg"
    assert (root / "srv/link").is_symlink() and os.readlink(root / "srv/link") == "real"
    assert {p.name for p in pkg.iterdir()} == {"a.py", "b.py", "keep.py", "hard.py", "ghost.py", "new", "__pycache__"}
    assert [(pkg / n).read_text() for n in ("a.py", "b.py", "ghost.py", "new/added.py", "hard.py", "keep.py")] == \
        ["new a\n", "b v3\n", "ghost is back\n", "added\n", "hard no more\n", "kept\n"]
    assert list((pkg / "__pycache__").iterdir()) == []
    assert sorted(p.name for p in (root / "srv/opq").iterdir()) == ["x.py", "y.py"]
    assert (root / "srv/opq/x.py").read_text() == "x again\n"
    stat = (pkg / "a.py").stat()
    assert (stat.st_uid, stat.st_gid, stat.st_mode & 0o7777) == (42, 43, 0o640)


def test_reading_stops_at_the_topmost_holder_and_layers_are_cached(edge_base, tmp_path):
    client, base = edge_base
    cache = LayerCache(client)
    top = native(tmp_path, "top", (TOP_PATCH, "/", "top fix"))
    build_native(client, cache, REPO, base, "b", top)
    assert cache.layers_read == 1, "the top layer holds etc/top: nothing below is read"
    build_native(client, cache, REPO, base, "b", native(tmp_path, "top2", (TOP_PATCH, "/", "again")))
    assert cache.layers_read == 1, "a layer already read is not read again"


def test_a_patch_that_does_not_apply_names_image_file_and_hunk(edge_base, tmp_path):
    client, base = edge_base
    bad = EDGE_PATCH.replace("-old a", "-not what is there")
    with pytest.raises(BuildError) as caught:
        build_native(client, LayerCache(client), REPO, base, "b", native(tmp_path, "edge", (bad, "/srv/link", "bad")))
    message = caught.value.message
    assert "edge:" in message and "01-edge.patch" in message and "Hunk #1 FAILED" in message, message
    assert "a.py" in message
    whited = EDGE_PATCH.replace("--- /dev/null\n+++ b/pkg/ghost.py\n@@ -0,0 +1 @@\n+ghost is back\n",
                                "--- a/pkg/ghost.py\n+++ b/pkg/ghost.py\n@@ -1 +1 @@\n-ghost\n+boo\n")
    with pytest.raises(BuildError, match="ghost.py"):
        build_native(client, LayerCache(client), REPO, base, "b", native(tmp_path, "w", (whited, "/srv/link", "w")))


def test_same_base_and_patches_give_the_same_digest_in_two_fresh_registries(registry_factory, tmp_path):
    found = []
    for name in ("one", "two"):
        registry = registry_factory(name)
        client = RegistryClient(registry.address, tls="http")
        base = push_image(client, REPO, "base", [tar_layer(BOTTOM), tar_layer(MIDDLE), tar_layer(TOP)]).digest
        work = tmp_path / f"patches-{name}"
        work.mkdir()
        built = build_native(client, LayerCache(client), REPO, base, "upstream/apex/edge:base",
                             native(work, "edge", (EDGE_PATCH, "/srv/link", "edge fix")))
        digests, _ = push_built(client, [built], {"edge": ["apex"]})
        found.append((digests["edge"], client.head_manifest(REPO, "apex")[0], built.layer.digest))
    assert found[0] == found[1]



@pytest.mark.parametrize("oci", [False, True], ids=["docker-v2s2", "oci"])
def test_the_base_manifest_family_is_kept(registry_factory, tmp_path, oci):
    client = RegistryClient(registry_factory("family").address, tls="http")
    base = push_image(client, REPO, "base", [tar_layer(BOTTOM), tar_layer(MIDDLE), tar_layer(TOP)], oci=oci)
    built = build_native(client, LayerCache(client), REPO, base.digest, "upstream/apex/edge:base",
                         native(tmp_path, "top", (TOP_PATCH, "/", "top fix")))
    manifest, original = built.manifest.json(), base.json()
    assert built.manifest.media_type == base.media_type
    assert manifest["config"]["mediaType"] == original["config"]["mediaType"]
    assert manifest["layers"][:-1] == original["layers"]
    assert manifest["layers"][-1]["mediaType"] == original["layers"][-1]["mediaType"]
    # Docker v2 schema 2 has no annotations; OCI gets the base's digest and name there too.
    assert manifest.get("annotations", {}).get(BASE_DIGEST_LABEL) == (base.digest if oci else None)
