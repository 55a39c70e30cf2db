"""The SSH forward carrying registry traffic: a real registry behind a real loopback sshd."""

from __future__ import annotations

import yaml
import pytest

from apex_tools.catalog.images import load_catalog
from apex_tools.core.config import Layer, resolve, settings_path
from apex_tools.core.run import RunContext, Status
from apex_tools.core.settings import load_deploy_settings
from apex_tools.registry.client import RegistryClient
from apex_tools.targets.push_registry import push_registry
from apex_tools.undercloud.drivers import driver_for
from registry_support import layer_blob, push_image
from ssh_support import sshd  # noqa: F401 (fixture)

# The registry as the undercloud and the parameter file name it; never contacted from here.
NAMED = "192.0.2.1:8787"


def options_for(sshd, tmp_path, remote: str, **extra):
    data = {
        "work_dir": str(tmp_path / "work"),
        "registry": {"address": NAMED, "start": False},
        "undercloud": {"driver": "existing", "host": sshd.host, "port": sshd.port, "user": sshd.user,
                       "ssh_key": str(sshd.key), "forward_registry": "always", "registry_remote": remote},
        **extra,
    }
    return resolve([Layer("test", data)]).options


def test_the_forward_carries_registry_traffic_and_closes(sshd, registry, tmp_path):
    driver = driver_for(options_for(sshd, tmp_path, registry.address), NAMED)
    blob = layer_blob("data", 300_000)
    with driver.reachable_registry() as reachable:
        assert reachable.startswith("127.0.0.1:") and reachable != registry.address
        pushed = push_image(RegistryClient(reachable, tls="http"), "apex/forwarded", "v1", [blob])
        forward = driver.forward
        assert forward is not None and forward.connections >= 1 and forward.bytes_up > 300_000
    # What went through the forward is in the registry behind it.
    direct = RegistryClient(registry.address, tls="http")
    assert direct.head_manifest("apex/forwarded", "v1")[0] == pushed.digest
    # Closed after the block: nothing listens on the forward's port any more.
    with pytest.raises(OSError):
        RegistryClient(reachable, tls="http").session.get(f"http://{reachable}/v2/", timeout=2)
    assert driver.forward is None


def test_no_forward_for_a_registry_on_this_host_or_the_local_driver(sshd, registry, tmp_path):
    auto = resolve([Layer("test", {"undercloud": {"driver": "existing", "host": "127.0.0.1",
                                                  "ssh_key": str(sshd.key)}})]).options
    with driver_for(auto, registry.address).reachable_registry() as reachable:
        assert reachable == registry.address  # loopback: this host's own registry, reached directly
    local = resolve([Layer("test", {"undercloud": {"driver": "local", "forward_registry": "always"}})]).options
    with driver_for(local, NAMED).reachable_registry() as reachable:
        assert reachable == NAMED


@pytest.mark.slow
def test_push_registry_mirrors_through_the_forward_and_names_the_undercloud_registry(
        sshd, registry_factory, tmp_path):
    upstream, local = registry_factory("upstream"), registry_factory("local")
    settings = load_deploy_settings(settings_path("os-nosdn-nofeature-noha", "deploy"))
    catalog = load_catalog(settings.os_version)
    client = RegistryClient(upstream.address, tls="http")
    base = [layer_blob("base", 5_000)]
    for image in catalog.deployment_images(settings):
        push_image(client, f"tripleomaster/centos-binary-{image.name}", "current-tripleo",
                   base + [layer_blob(image.name, 200)])
    push_image(client, catalog.ceph.repository, catalog.ceph.tag, base + [layer_blob("ceph", 300)])
    options = options_for(sshd, tmp_path, local.address,
                          upstream={"registry": upstream.address, "insecure": True,
                                    "ceph_registry": upstream.address})
    result = push_registry(RunContext(options))
    assert result.status is Status.CHANGED, result
    params = yaml.safe_load((tmp_path / "work" / "docker-images.yaml").read_text())["parameter_defaults"]
    assert params["ContainerNovaApiImage"] == f"{NAMED}/tripleomaster/centos-binary-nova-api:current-tripleo"
    assert params["DockerInsecureRegistryAddress"] == [NAMED]
    lists = (tmp_path / "work" / "overcloud_containers.yaml").read_text()
    assert f"push_destination: {NAMED}" in lists and "127.0.0.1" not in lists.replace(upstream.address, "")
    # The images are in the registry behind the forward.
    behind = RegistryClient(local.address, tls="http")
    assert behind.head_manifest("tripleomaster/centos-binary-nova-api", "current-tripleo") is not None
    # A second run (a new forward, a new port) is up to date.
    assert push_registry(RunContext(options)).status is Status.UP_TO_DATE
