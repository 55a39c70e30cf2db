"""The shared fixtures start real services and make real images."""

import requests


def test_registry_answers_v2_and_stores_a_blob(registry):
    response = requests.get(f"{registry.url}/v2/", timeout=5)
    assert response.status_code == 200
    assert response.headers["Docker-Distribution-Api-Version"] == "registry/2.0"


def test_two_registries_are_independent(registry_factory):
    a, b = registry_factory("a"), registry_factory("b")
    assert a.address != b.address
    assert requests.get(f"{b.url}/v2/_catalog", timeout=5).json() == {"repositories": []}


def test_base_image_runs_a_shell(docker_client, base_image):
    out = docker_client.containers.run(base_image, ["sh", "-c", "echo hi; id -u"], remove=True, network_mode="host")
    assert out.decode().split() == ["hi", "0"]
