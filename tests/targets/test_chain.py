"""patch-containers then push-registry, for real: a local keystone patch is rendered into a
Dockerfile by patch-containers, built from the mirrored image, pushed as ``:apex`` and named by
docker-images.yaml; then both targets are up to date.
"""

from __future__ import annotations


import yaml

from apex_tools.core.config import Layer, resolve
from apex_tools.targets.patch_containers import patch_containers
from apex_tools.targets.push_registry import push_registry
from apex_tools.registry.client import RegistryClient
from apex_tools.core.run import RunContext, Status

from fake_gerrit import git_patch
from registry_support import push_keystone_image
from test_push_registry import lab, nova_api_image  # noqa: F401 - fixtures

SITE = "/usr/lib/python3/dist-packages"
KEYSTONE = "tripleomaster/centos-binary-keystone"
PATCH = git_patch("I" + "e" * 40, {"keystone/api.py": ('def hello():\n    return "old"\n',
                                                      'def hello():\n    return "new"\n')})


def test_patched_keystone_goes_from_patch_to_apex_image(lab, tmp_path, docker_client, debian_image):  # noqa: F811
    upstream = lab["upstream"].address
    push_keystone_image(docker_client, debian_image, f"{upstream}/{KEYSTONE}", SITE)
    (tmp_path / "hello.patch").write_text(PATCH)
    (tmp_path / "local.yaml").write_text(yaml.safe_dump(
        {"overcloud": [{"path": str(tmp_path / "hello.patch"), "project": "openstack/keystone"}]}))
    (tmp_path / "common.yaml").write_text("patches: {}\n")
    base = lab["options"]().model_dump(mode="json")
    base.update(patches_file=str(tmp_path / "common.yaml"),
                patching={**base["patching"], "python_path": SITE, "local_patches": str(tmp_path / "local.yaml")})
    options = resolve([Layer("test", base)]).options

    patched = patch_containers(RunContext(options))
    assert patched.status is Status.CHANGED, patched.changes
    assert (lab["work"] / "containers" / "keystone" / "Dockerfile").is_file()

    result = push_registry(RunContext(options))
    assert result.status is Status.CHANGED, result.changes
    assert [i.name for i in result.items if i.status == "rebuilt"] == [KEYSTONE]
    local = lab["local"]
    params = yaml.safe_load((lab["work"] / "docker-images.yaml").read_text())["parameter_defaults"]
    assert params["ContainerKeystoneImage"] == f"{local}/{KEYSTONE}:apex"
    out = docker_client.containers.run(f"{local}/{KEYSTONE}:apex",
                                       ["python3", "-c", "import keystone.api; print(keystone.api.hello())"],
                                       remove=True, network_mode="host")
    assert out == b"new\n"
    assert docker_client.images.get(f"{local}/{KEYSTONE}:apex").attrs["Config"]["User"] == "keystone"

    assert patch_containers(RunContext(options)).status is Status.UP_TO_DATE
    assert push_registry(RunContext(options)).status is Status.UP_TO_DATE
    assert "apex" in RegistryClient(local, tls="http").tags(KEYSTONE)
