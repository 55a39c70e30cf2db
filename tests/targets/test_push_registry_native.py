"""push-registry with the native builder (the default) on the lab's kolla-shaped images: no engine
reachable, the record other targets read, an engine-only image failing alone, and the native
result against the ``docker`` builder's as an independent client (skopeo + umoci) unpacks them.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from apex_tools.builders.docker_sdk import DockerBuilder
from apex_tools.core.config import Layer, resolve
from apex_tools.core.reference import ImageRef
from apex_tools.core.run import RunContext, Status
from apex_tools.lab.images import push_seeds
from apex_tools.lab.stand import lab_seeds
from apex_tools.patching.apply import PatchStep
from apex_tools.patching.dockerfile import ImagePatch, image_labels, render_dockerfile
from apex_tools.registry.client import RegistryClient
from apex_tools.registry.native import LayerCache, NativeImage, build_native, push_built
from apex_tools.registry.server import stop_local_registry
from apex_tools.targets.patch_containers import patch_containers
from apex_tools.targets.push_registry import push_registry

from conftest import REPO, free_port
from fake_gerrit import FakeChange, run_fake_gerrit
from registry_support import unpack

NOVA = ("nova-api", "nova-compute", "nova-conductor", "nova-libvirt", "nova-novncproxy", "nova-scheduler")
NOWHERE = "tcp://127.0.0.1:9"  # nothing listens there: any engine call fails
SITE = "/usr/lib/python3.9/site-packages"  # master's python path; a link into the venv in the lab's images


@pytest.fixture
def lab(registry_factory, tmp_path):
    """An upstream registry seeded with the lab's images (over the API, no engine); options for it."""
    upstream = registry_factory("upstream")
    work = tmp_path / "work"
    local = f"127.0.0.1:{free_port()}"

    def options(**extra):
        data = {"work_dir": str(work), "jobs": 4, "patches_file": "lab-common-patches",
                "patching": {"local_patches": "lab"}, "registry": {"address": local},
                "upstream": {"registry": upstream.address, "insecure": True, "ceph_registry": upstream.address},
                **extra}
        return resolve([Layer("test", data)]).options

    push_seeds(RegistryClient(upstream.address, tls="http"), lab_seeds(RunContext(options())))
    yield {"options": options, "work": work, "local": local, "upstream": upstream.address}
    stop_local_registry(work)


def test_push_registry_rebuilds_natively_with_no_engine(lab, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", NOWHERE)
    patch_containers(RunContext(lab["options"]()))
    result = push_registry(RunContext(lab["options"]()))
    assert result.status is Status.CHANGED, (result.changes, result.items)
    rebuilt = sorted(i.name.rsplit("-", 1)[0].split("centos-binary-")[1] + "-" + i.name.rsplit("-", 1)[1]
                     for i in result.items if i.status == "rebuilt")
    assert rebuilt == sorted(NOVA)
    native = next(c for c in result.changes if c.startswith("native builds read "))
    assert native.endswith("uploaded 7 blobs"), "one layer for all six (same files, same patch), mounted; six configs"
    upstream = RegistryClient(lab["upstream"], tls="http")
    layers = {d["digest"] for name in NOVA for d in upstream.get_manifest(f"tripleomaster/centos-binary-{name}",
                                                                           "current-tripleo").json()["layers"]}
    assert native.startswith(f"native builds read {len(layers)} layers"), (native, "each shared layer read once")

    client = RegistryClient(lab["local"], tls="http")
    record = RunContext(lab["options"]()).state.load("push-registry").data["rebuilds"]
    assert sorted(record) == sorted(NOVA)
    api = record["nova-api"]
    repository = "tripleomaster/centos-binary-nova-api"
    assert api["digest"] == client.head_manifest(repository, "apex")[0]
    assert api["base_digest"] == RegistryClient(lab["upstream"], tls="http").head_manifest(repository,
                                                                                          "current-tripleo")[0]
    assert (api["builder"], api["status"], api["ref"]) == ("native", "rebuilt", f"{lab['local']}/{repository}:apex")
    assert api["base"] == f"{lab['local']}/{repository}:current-tripleo"
    assert [(p["project"], p["file"]) for p in api["patches"]] == [("openstack/nova", "01-nova-lab-version.patch")]
    assert api["patches"][0]["sha256"].startswith("sha256:")
    params = yaml.safe_load((lab["work"] / "docker-images.yaml").read_text())["parameter_defaults"]
    assert params["ContainerNovaApiImage"] == f"{lab['local']}/{repository}:apex"

    config = json.loads(client.get_blob(repository, json.loads(client.get_manifest(repository, "apex").raw)
                                        ["config"]["digest"]))
    assert config["config"]["User"] == "nova" and config["config"]["Labels"]["io.opnfv.apex.patch.01"]
    assert config["history"][-1]["created_by"].startswith("apex-tools patch: openstack/nova")

    assert push_registry(RunContext(lab["options"]())).status is Status.UP_TO_DATE
    again = push_registry(RunContext(lab["options"](), force=True))
    assert not [i for i in again.items if i.status == "rebuilt"] and not any("native builds" in c for c in again.changes)


def test_an_engine_only_image_fails_alone_when_no_engine_answers(lab, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", NOWHERE)
    run = RunContext(lab["options"]())
    patch_containers(run)
    record = run.state.load("patch-containers")
    data = dict(record.data)
    data["rebuild"]["nova-scheduler"]["engine_only"] = "reinstalls OpenDaylight (test)"
    run.state.save("patch-containers", record.fingerprint, outputs=[Path(p) for p in record.outputs], data=data)

    planned = push_registry(RunContext(lab["options"](), dry_run=True))
    line = next(c for c in planned.changes if "nova-scheduler" in c)
    assert "(docker: reinstalls OpenDaylight (test))" in line, planned.changes
    result = push_registry(RunContext(lab["options"]()))
    assert result.status is Status.FAILED
    failed = [i for i in result.items if i.status == "failed"]
    assert [i.name for i in failed] == ["tripleomaster/centos-binary-nova-scheduler"]
    assert "cannot reach the Docker engine" in failed[0].detail and "OpenDaylight" in failed[0].detail
    client = RegistryClient(lab["local"], tls="http")
    assert "apex" in client.tags("tripleomaster/centos-binary-nova-api"), "the others still rebuild"
    assert "apex" not in client.tags("tripleomaster/centos-binary-nova-scheduler")
    assert not (lab["work"] / "docker-images.yaml").exists()


SECOND = """\
--- a/nova/__init__.py
+++ b/nova/__init__.py
@@ -1 +1,2 @@
 \"\"\"nova: apex-tools lab stand-in code tree.\"\"\"
+EXTRA = True
--- /dev/null
+++ b/nova/added.py
@@ -0,0 +1 @@
+ADDED = 1
"""


def tree(root: Path) -> dict[str, tuple]:
    """Every path's type, mode, owner and content (file bytes, link target); mtimes aside."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            info = os.lstat(path)
            body = (path.read_bytes() if stat.S_ISREG(info.st_mode) else
                    os.readlink(path) if stat.S_ISLNK(info.st_mode) else None)
            out[str(path.relative_to(root))] = (stat.S_IFMT(info.st_mode), info.st_mode & 0o7777, info.st_uid,
                                                info.st_gid, body)
    return out


def test_native_and_docker_builds_hold_the_same_files(lab, tmp_path, docker_client):
    upstream = RegistryClient(lab["upstream"], tls="http")
    repository = "tripleomaster/centos-binary-nova-api"
    base = f"{lab['upstream']}/{repository}:current-tripleo"
    base_digest = upstream.head_manifest(repository, "current-tripleo")[0]
    context = tmp_path / "context"
    context.mkdir()
    (context / "01-lab.patch").write_bytes((REPO / "config/patches/lab/nova-lab-version.patch").read_bytes())
    (context / "02-second.patch").write_text(SECOND)
    patches = [ImagePatch("01-lab.patch", SITE, "openstack/nova", source="lab"),
               ImagePatch("02-second.patch", SITE, "openstack/nova", source="second")]
    labels = image_labels(base, patches)
    (context / "Dockerfile").write_text(render_dockerfile(base, "nova", patches, labels))

    engine = f"{lab['upstream']}/{repository}:docker-built"
    DockerBuilder(docker_client).build(context, [engine])
    docker_digest = DockerBuilder(docker_client).push(engine)
    image = NativeImage("nova-api", tuple(PatchStep(context / p.file, p.target_dir, p.strip, p.label) for p in patches),
                        tuple(labels))
    built = build_native(upstream, LayerCache(upstream), repository, base_digest, base, image)
    push_built(upstream, [built], {"nova-api": ["native-built"]})
    try:
        native_tree = tree(unpack(lab["upstream"], f"{repository}:native-built", tmp_path / "native"))
        docker_tree = tree(unpack(lab["upstream"], f"{repository}:docker-built", tmp_path / "docker"))
        assert native_tree == docker_tree
        patched = native_tree["var/lib/kolla/venv/lib/python3.9/site-packages/nova/version.py"][4]
        assert b"PATCHED = True" in patched, "the patch went through the symlinked usr/lib/python3.9"
        assert "var/lib/kolla/venv/lib/python3.9/site-packages/nova/added.py" in native_tree

        native_config = json.loads(built.config)["config"]
        docker_config = docker_client.images.get(engine).attrs["Config"]
        assert native_config["User"] == docker_config["User"] == "nova"
        assert docker_config["Labels"].items() <= native_config["Labels"].items()
        assert docker_digest == upstream.head_manifest(repository, "docker-built")[0]

        ref = str(ImageRef.parse(f"{lab['upstream']}/{repository}:native-built"))
        out = docker_client.containers.run(ref, ["cat", f"{SITE}/nova/added.py"], remove=True, network_mode="host")
        assert out == b"ADDED = 1\n", "the native image runs in the engine"
    finally:
        for tag in (engine, f"{lab['upstream']}/{repository}:native-built"):
            docker_client.images.remove(tag, force=True) if docker_client.images.list(tag) else None


def test_a_gerrit_patch_set_ends_in_provenance_and_apex_report(lab, tmp_path):
    """A change at patch set 5 on the fake Gerrit: its number and commit reach patch-containers' and
    push-registry's records, provenance.json, the SLSA statement and ``apex report``'s table."""
    change_id = "I" + "5" * 40
    common = tmp_path / "common.yaml"
    common.write_text(yaml.safe_dump({"patches": {"master": {"overcloud": [
        {"change-id": change_id, "project": "openstack/nova"}]}}}))
    text = (REPO / "config/patches/lab/nova-lab-version.patch").read_text()
    with run_fake_gerrit() as fake:
        change = fake.add(FakeChange("openstack/nova", "master", change_id, text, patchset=5))
        options = lab["options"](patches_file=str(common), gerrit={"url": fake.url, "tries": 1},
                                 patching={"local_patches": ""})
        patch_containers(RunContext(options))
    identity = {"project": "openstack/nova", "change_id": change_id, "revision": change.revision, "patch_set": 5,
                "commit": change.revision}
    planned = RunContext(options).state.load("patch-containers").data
    assert {k: planned["rebuild"]["nova-api"]["patches"][0][k] for k in identity} == identity
    assert push_registry(RunContext(options)).status is Status.CHANGED
    record = RunContext(options).state.load("push-registry").data["rebuilds"]["nova-api"]["patches"][0]
    assert {k: record[k] for k in identity} == identity
    provenance = json.loads((lab["work"] / "provenance.json").read_text())
    [api] = [i for i in provenance["images"] if i["name"] == "nova-api"]
    [patch] = api["rebuild"]["patches"]
    assert {k: patch[k] for k in identity} == identity and f"sha256:{patch['sha256']}" == record["sha256"]
    statement = json.loads((lab["work"] / api["rebuild"]["statement"]).read_text())
    dependency = statement["predicate"]["buildDefinition"]["resolvedDependencies"][1]
    assert dependency["annotations"]["patch_set"] == 5 and dependency["digest"]["gitCommit"] == change.revision
    env = {**os.environ, "APEX_WORK_DIR": str(lab["work"])}
    table = subprocess.run([sys.executable, "-m", "apex_tools", "report"], env=env, cwd=tmp_path, text=True,
                           capture_output=True, check=True, stdin=subprocess.DEVNULL).stdout
    assert f"  patch openstack/nova {change_id}\n    patch set 5, commit {change.revision[:12]}, sha256:" in table
    assert all(len(line) <= 80 for line in table.splitlines()), table
