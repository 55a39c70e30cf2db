"""prepare_overcloud_containers.yaml run for real with ansible-playbook against localhost."""

from __future__ import annotations

import getpass
import grp
import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

from apex_tools.registry.client import RegistryClient
from apex_tools.core.resources import data_path

from conftest import need
from registry_support import layer_blob, push_image

PLAYBOOK = data_path("ansible", "playbooks", "prepare_overcloud_containers.yaml")


def _run_playbook(work: Path, home: Path) -> subprocess.CompletedProcess[str]:
    need(shutil.which("ansible-playbook") is not None, "ansible-playbook (Debian package ansible-core)")
    inventory = work.parent / "inventory"
    inventory.write_text("undercloud ansible_connection=local ansible_python_interpreter=/usr/bin/python3\n")
    user = getpass.getuser()
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_LOCALHOST_WARNING": "0", "ANSIBLE_RETRY_FILES_ENABLED": "0"}
    return subprocess.run(
        ["ansible-playbook", "-i", str(inventory), str(PLAYBOOK), "-e", f"apex_work_dir={work}",
         "-e", f"stack_home={home}", "-e", f"stack_user={user}",
         "-e", f"stack_group={grp.getgrgid(os.getgid()).gr_name}"],
        # A fresh /dev/null: ansible refuses a stdin that anything before it made non-blocking.
        stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, timeout=300,
    )


@pytest.fixture
def outputs(tmp_path, registry):
    """A work dir as push-registry leaves it, over a real registry holding two of three images."""
    client = RegistryClient(registry.address, tls="http")
    for name in ("nova-api", "keystone"):
        push_image(client, f"tripleomaster/centos-binary-{name}", "current-tripleo", [layer_blob(name, 300)])
    push_image(client, "tripleomaster/centos-binary-nova-api", "apex", [layer_blob("patched", 300)])
    work = tmp_path / "work"
    work.mkdir()
    params = {
        "ContainerNovaApiImage": f"{registry.address}/tripleomaster/centos-binary-nova-api:apex",
        "ContainerNovaConfigImage": f"{registry.address}/tripleomaster/centos-binary-nova-api:apex",
        "ContainerKeystoneImage": f"{registry.address}/tripleomaster/centos-binary-keystone:current-tripleo",
        "DockerInsecureRegistryAddress": [registry.address],
    }
    (work / "docker-images.yaml").write_text(yaml.safe_dump({"parameter_defaults": params}))
    for name in ("overcloud_containers.yaml", "sdn_containers.yaml"):
        (work / name).write_text("container_images: []\n")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = b"FROM x\n"
        info = tarfile.TarInfo("containers/nova-api/Dockerfile")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    (work / "docker_patches.tar.gz").write_bytes(buf.getvalue())
    return work, params, registry


def test_playbook_places_files_unpacks_patches_and_checks_images(outputs, tmp_path):
    work, _, _ = outputs
    home = tmp_path / "home"
    home.mkdir()
    done = _run_playbook(work, home)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert (home / "containers" / "nova-api" / "Dockerfile").read_text() == "FROM x\n"
    for name in ("overcloud_containers.yaml", "sdn_containers.yaml", "docker-images.yaml"):
        assert (home / name).read_bytes() == (work / name).read_bytes()
    # Two distinct images are named (the config parameter repeats nova-api): two HEADs.
    checks = done.stdout.split("TASK [Check that each image answers in the registry]")[1]
    assert checks.count("ok: [undercloud] => (item=") == 2


def test_playbook_fails_on_an_image_missing_from_the_registry(outputs, tmp_path):
    work, params, registry = outputs
    params["ContainerHeatEngineImage"] = f"{registry.address}/tripleomaster/centos-binary-heat-engine:current-tripleo"
    (work / "docker-images.yaml").write_text(yaml.safe_dump({"parameter_defaults": params}))
    home = tmp_path / "home"
    home.mkdir()
    done = _run_playbook(work, home)
    assert done.returncode != 0
    assert "centos-binary-heat-engine:current-tripleo" in done.stdout and "404" in done.stdout
