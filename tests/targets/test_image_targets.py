"""Every landed target inside the tool's image, as a user runs it: ``docker run --rm --network
host`` with the docker socket and the work/image dir mounted at identical paths, against the
suite's loopback services (nginx for RDO's images, a fake Gerrit, an upstream registry).

One workspace is carried through the flow in order: fetch-images (a real download and unpack
of a real qcow2), patch-containers (one keystone change from the fake Gerrit, one puppet change
for the disk image), ceph-loop (libguestfs under TCG inside the container) and push-registry
(starts the local registry from inside the container, mirrors, rebuilds keystone through the
host's engine). Each target runs twice, in two containers: "changed", then "up to date".
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from apex_tools.registry.client import RegistryClient
from apex_tools.registry.server import CONTAINER_LABEL, stop_local_registry

from conftest import free_port, run_registry
from fake_gerrit import FakeChange, git_patch, run_fake_gerrit
from http_upstream import run_nginx
from image_support import DOCKER_SOCKET, docker_run
from registry_support import forget_images, push_keystone_image, seed_default_deployment
from test_ceph_loop import PUPPET_TEXT, base_qcow2, read_back  # noqa: F401 - fixture

pytestmark = pytest.mark.slow

OS = "master"
SITE = "/usr/lib/python3/dist-packages"
KEYSTONE = "tripleomaster/centos-binary-keystone"
KEYSTONE_CHANGE = "I" + "e" * 40
PUPPET_CHANGE = "I" + "f" * 40
KEYSTONE_PATCH = git_patch(KEYSTONE_CHANGE, {"keystone/api.py": ('def hello():\n    return "old"\n',
                                                                 'def hello():\n    return "new"\n')})
PUPPET_PATCH = git_patch(PUPPET_CHANGE, {"manifests/profile/ceph.pp": (
    PUPPET_TEXT, PUPPET_TEXT.replace("$osd_count = 1", "$osd_count = 3"))})


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1_500_000_000
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _publish(folder: Path, qcow2: Path) -> None:
    """RDO's layout: the two tarballs with md5 sidecars; the overcloud one holds a real qcow2."""
    folder.mkdir(parents=True)
    bodies = {
        "overcloud-full.tar": _tar({"overcloud-full.qcow2": qcow2.read_bytes(),
                                    "overcloud-full.vmlinuz": b"kernel\n", "overcloud-full.initrd": b"initrd\n"}),
        "ironic-python-agent.tar": _tar({"ironic-python-agent.kernel": b"kernel\n",
                                         "ironic-python-agent.initramfs": b"initramfs\n"}),
    }
    for name, body in bodies.items():
        (folder / name).write_bytes(body)
        (folder / f"{name}.md5").write_text(f"{hashlib.md5(body).hexdigest()}  {name}\n")


def _seed_upstream(address: str, docker_client: Any, debian_image: Any) -> None:
    """Every image of the default deployment; keystone is a real one a patch can change."""
    seed_default_deployment(RegistryClient(address, tls="http"), except_image="keystone")
    push_keystone_image(docker_client, debian_image, f"{address}/{KEYSTONE}", SITE)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, base_qcow2: Path, docker_client: Any,  # noqa: F811
              debian_image: Any, tool_image: str) -> Iterator[dict[str, Any]]:
    """The loopback services and one apex.yaml pointing at them; everything stopped afterwards."""
    root = tmp_path_factory.mktemp("in-image")
    work, images = root / "work", root / "images"
    _publish(root / "www" / OS, base_qcow2)
    local = f"127.0.0.1:{free_port()}"
    with run_nginx(root / "nginx", root / "www") as nginx, run_fake_gerrit() as gerrit, \
            run_registry(root / "upstream") as upstream:
        gerrit.add(FakeChange("openstack/keystone", "master", KEYSTONE_CHANGE, KEYSTONE_PATCH))
        gerrit.add(FakeChange("openstack/puppet-tripleo", "master", PUPPET_CHANGE, PUPPET_PATCH))
        _seed_upstream(upstream.address, docker_client, debian_image)
        (root / "deploy.yaml").write_text(yaml.safe_dump({
            "global_params": {"ha_enabled": False, "patches": {"undercloud": [], "overcloud": [
                {"change-id": KEYSTONE_CHANGE, "project": "openstack/keystone"},
                {"change-id": PUPPET_CHANGE, "project": "openstack/puppet-tripleo"}]}},
            "deploy_options": {"os_version": OS, "containers": True, "ceph": True},
        }))
        (root / "common.yaml").write_text("patches: {}\n")
        (root / "apex.yaml").write_text(yaml.safe_dump({
            "work_dir": str(work), "image_dir": str(images),
            "deploy_settings": str(root / "deploy.yaml"), "patches_file": str(root / "common.yaml"),
            "upstream": {"images_url": f"{nginx.url}/{{os_version}}/", "registry": upstream.address,
                         "ceph_registry": upstream.address, "insecure": True},
            "gerrit": {"url": gerrit.url, "tries": 1},
            "registry": {"address": local},
            "patching": {"python_path": SITE},
            "ceph": {"virtual": True},
        }))
        try:
            yield {"root": root, "work": work, "images": images, "local": local, "image": tool_image,
                   "upstream": upstream.address}
        finally:
            stop_local_registry(work)
            # The engine notices the registry's exit a moment after its process is gone.
            deadline = time.monotonic() + 20
            while docker_client.containers.list(filters={"label": CONTAINER_LABEL}) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert not docker_client.containers.list(filters={"label": CONTAINER_LABEL}), "registry left running"
            forget_images(docker_client, (local, upstream.address))


def apex_in_image(ws: dict[str, Any], target: str) -> dict[str, Any]:
    """``docker run apex-tools -f apex.yaml <target> --json`` as a user runs it; the target's row."""
    assert DOCKER_SOCKET.is_socket()
    done = docker_run(ws["image"], "-f", str(ws["root"] / "apex.yaml"), target, "--json",
                      mounts=[ws["root"]], docker_socket=True,
                      env={"LIBGUESTFS_BACKEND_SETTINGS": "force_tcg"}, timeout=900)
    (row,) = json.loads(done.stdout)
    assert row["target"] == target
    return row


def twice(ws: dict[str, Any], target: str, between: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run ``target`` in two containers: changed, then up to date. Returns the first row."""
    first = apex_in_image(ws, target)
    assert first["status"] == "changed", first
    if between is not None:
        between(first)
    second = apex_in_image(ws, target)
    assert (second["status"], second["changes"]) == ("up to date", ["up to date"]), second
    return first


# The tests run in the flow's order, each on what the one before left in the workspace.

def test_fetch_images_downloads_and_unpacks_inside_the_image(workspace: dict[str, Any], base_qcow2: Path) -> None:  # noqa: F811
    twice(workspace, "fetch-images")
    folder = workspace["images"] / OS
    assert (folder / "overcloud-full.qcow2").read_bytes() == base_qcow2.read_bytes()
    assert (folder / "ironic-python-agent.kernel").read_bytes() == b"kernel\n"


def test_patch_containers_sorts_the_fake_gerrits_changes_inside_the_image(workspace: dict[str, Any]) -> None:
    twice(workspace, "patch-containers")
    work = workspace["work"]
    assert "FROM " in (work / "containers" / "keystone" / "Dockerfile").read_text()
    assert sorted(p.name for p in (work / "containers").iterdir()) == ["keystone"]
    manifest = json.loads((work / "image_patches" / "overcloud" / "manifest.json").read_text())
    assert [m["change_id"] for m in manifest] == [PUPPET_CHANGE]
    assert (work / "docker_patches.tar.gz").is_file()


def test_ceph_loop_customizes_the_image_with_libguestfs_inside_the_image(workspace: dict[str, Any]) -> None:
    twice(workspace, "ceph-loop")
    work = workspace["work"]
    inside = read_back(work / "overcloud-full.qcow2")
    assert "$osd_count = 3" in inside["puppet"]
    assert inside["link"].endswith("apex-ceph-loop.service")
    assert (work / "storage-environment.yaml").is_file()


def test_push_registry_starts_the_registry_mirrors_and_rebuilds_inside_the_image(
        workspace: dict[str, Any], docker_client: Any) -> None:
    local = workspace["local"]

    def outlived_its_container(first: dict[str, Any]) -> None:
        assert any(c.startswith(f"started the local registry on {local}") for c in first["changes"]), first
        assert RegistryClient(local, tls="http").ping(), "the registry must outlive the run's container"
        (beside,) = docker_client.containers.list(filters={"label": CONTAINER_LABEL})
        assert beside.image.id == docker_client.images.get(workspace["image"]).id

    first = twice(workspace, "push-registry", between=outlived_its_container)
    rebuilt = [i["name"] for i in first["items"] if i["status"] == "rebuilt"]
    assert rebuilt == [KEYSTONE]
    params = yaml.safe_load((workspace["work"] / "docker-images.yaml").read_text())["parameter_defaults"]
    assert params["ContainerKeystoneImage"] == f"{local}/{KEYSTONE}:apex"
    # The rebuilt image holds the patch: run it with the host's engine, from the local registry.
    out = docker_client.containers.run(f"{local}/{KEYSTONE}:apex",
                                       ["python3", "-c", "import keystone.api; print(keystone.api.hello())"],
                                       remove=True, network_mode="host")
    assert out == b"new\n"
