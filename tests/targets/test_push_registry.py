"""push-registry end to end: a loopback upstream seeded with the catalog's images, the local
registry started by the target itself, real builds with the engine and with buildah.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
import yaml

from apex_tools.core.config import Layer, resolve
from apex_tools.core.errors import BuildError
from apex_tools.targets.push_registry import push_registry
from apex_tools.registry.client import RegistryClient
from apex_tools.registry.server import stop_local_registry
from apex_tools.core.run import RunContext, Status
from apex_tools.core.reference import ImageRef
from apex_tools.trust.keys import ensure_key
from apex_tools.trust.sigstore import SIGNED, sign_image

from conftest import free_port, need
from registry_support import engine_push, forget_images, seed_default_deployment

NOVA_API = "tripleomaster/centos-binary-nova-api"


@pytest.fixture(scope="module")
def nova_api_image(docker_client, base_image):
    """A runnable stand-in for nova-api: busybox with a file a patch can change."""
    dockerfile = f"FROM {base_image}\nRUN mkdir -p /srv/app && printf 'old line\\n' > /srv/app/code.py\n"
    image, _ = docker_client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag="apex-test/nova-api:latest",
                                          network_mode="host", rm=True)
    return image


@pytest.fixture
def lab(registry_factory, tmp_path, docker_client, nova_api_image):
    """An upstream registry holding every image of the default deployment, and options pointing at it."""
    upstream = registry_factory("upstream")
    catalog, settings = seed_default_deployment(RegistryClient(upstream.address, tls="http"), except_image="nova-api")
    ref = f"{upstream.address}/{NOVA_API}"
    nova_api_image.tag(ref, "current-tripleo")
    engine_push(docker_client, ref, "current-tripleo")
    work = tmp_path / "work"
    local = f"127.0.0.1:{free_port()}"

    def options(**extra):
        data = {"work_dir": str(work), "jobs": 4,
                "upstream": {"registry": upstream.address, "insecure": True, "ceph_registry": upstream.address},
                "registry": {"address": local}, **extra}
        return resolve([Layer("test", data)]).options

    yield {"options": options, "work": work, "local": local, "upstream": upstream, "catalog": catalog,
           "settings": settings}
    stop_local_registry(work)
    forget_images(docker_client, (local, upstream.address))





def _params(work: Path) -> dict:
    return yaml.safe_load((work / "docker-images.yaml").read_text())["parameter_defaults"]


def test_dry_run_then_mirror_then_up_to_date(lab):
    work, local = lab["work"], lab["local"]
    count = len(lab["catalog"].deployment_images(lab["settings"])) + 1  # and the Ceph daemon
    planned = push_registry(RunContext(lab["options"](), dry_run=True))
    assert planned.status is Status.PLANNED
    assert planned.changes[0].startswith(f"start the local registry on {local}")
    assert any(f"mirror {count} of {count} images" in c for c in planned.changes), planned.changes
    assert any(c.startswith("sign the images docker-images.yaml names (a key generated now)")
               for c in planned.changes), planned.changes
    assert not work.exists() and not RegistryClient(local, tls="http").ping(), "a dry run touches nothing"

    result = push_registry(RunContext(lab["options"]()))
    assert result.status is Status.CHANGED, result.changes
    assert any(c.startswith(f"started the local registry on {local}") for c in result.changes)
    assert {i.status for i in result.items} == {"mirrored"} and len(result.items) == count

    params = _params(work)
    assert params["ContainerNovaApiImage"] == f"{local}/{NOVA_API}:current-tripleo"
    assert params["ContainerNovaConfigImage"] == params["ContainerNovaApiImage"]
    assert params["ContainerCephDaemonImage"] == f"{local}/{lab['catalog'].ceph.repository}:{lab['catalog'].ceph.tag}"
    assert params["DockerInsecureRegistryAddress"] == [local]
    assert all(v.startswith(local) for k, v in params.items() if k != "DockerInsecureRegistryAddress")
    overcloud = yaml.safe_load((work / "overcloud_containers.yaml").read_text())["container_images"]
    assert len(overcloud) == count and {e["push_destination"] for e in overcloud} == {local}
    assert f"{lab['upstream'].address}/{NOVA_API}:current-tripleo" in {e["imagename"] for e in overcloud}
    assert yaml.safe_load((work / "sdn_containers.yaml").read_text()) == {"container_images": []}

    before = {p.name: p.read_bytes() for p in work.glob("*.yaml")}
    again = push_registry(RunContext(lab["options"]()))
    assert (again.status, again.changes) == (Status.UP_TO_DATE, ["up to date"])
    forced = push_registry(RunContext(lab["options"](), force=True))
    assert {i.status for i in forced.items} == {"already there"}
    assert {p.name: p.read_bytes() for p in work.glob("*.yaml")} == before, "same inputs, same bytes"


def test_a_signature_replaced_in_the_registry_is_noticed_by_a_rerun(lab, tmp_path):
    """The re-run reads no signature, yet one HEAD per signature tag notices another key's signature."""
    work, local = lab["work"], lab["local"]
    assert push_registry(RunContext(lab["options"]())).status is Status.CHANGED
    assert push_registry(RunContext(lab["options"]())).status is Status.UP_TO_DATE
    ref = ImageRef.parse(_params(work)["ContainerNovaApiImage"])
    client = RegistryClient(local, tls="http")
    digest = client.head_manifest(ref.repository, ref.reference)[0]
    other, _ = ensure_key(tmp_path / "other")
    assert sign_image(client, ref, digest, other).status == SIGNED  # replaces our signature

    again = push_registry(RunContext(lab["options"]()))
    assert again.status is Status.CHANGED, again.changes
    assert any(c.startswith("signed 1 images (") for c in again.changes), again.changes
    assert push_registry(RunContext(lab["options"]())).status is Status.UP_TO_DATE


def _patch_context(work: Path, local: str, patch: str) -> Path:
    context = work / "containers" / "nova-api"
    context.mkdir(parents=True, exist_ok=True)
    (context / "fix.patch").write_text(patch)
    (context / "Dockerfile").write_text(
        f"FROM {local}/{NOVA_API}:current-tripleo\nUSER root\nCOPY fix.patch /tmp/fix.patch\n"
        "RUN cd /srv/app && patch -p1 -N < /tmp/fix.patch && rm /tmp/fix.patch\n"
        'LABEL org.opnfv.apex.patched="fix"\n'
    )
    return context


GOOD_PATCH = "--- a/code.py\n+++ b/code.py\n@@ -1 +1 @@\n-old line\n+new line\n"
BAD_PATCH = "--- a/code.py\n+++ b/code.py\n@@ -1 +1 @@\n-a line that is not there\n+new line\n"


@pytest.mark.parametrize("builder", ["docker", "buildah"], ids=["docker-sdk", "buildah"])
def test_patched_image_rebuilt_as_apex_and_found_again(lab, builder, docker_client):
    if builder == "buildah":
        need(shutil.which("buildah") is not None, "buildah")
    work, local = lab["work"], lab["local"]
    _patch_context(work, local, GOOD_PATCH)
    result = push_registry(RunContext(lab["options"](builder=builder)))
    assert result.status is Status.CHANGED, result.changes
    rebuilt = [i for i in result.items if i.status == "rebuilt"]
    assert [i.name for i in rebuilt] == [NOVA_API]
    assert "1 rebuilt as :apex" in result.changes, result.changes  # counted, not a line per image
    assert _params(work)["ContainerNovaApiImage"] == f"{local}/{NOVA_API}:apex"
    assert _params(work)["ContainerNovaComputeImage"].endswith(":current-tripleo")

    client = RegistryClient(local, tls="http")
    tags = client.tags(NOVA_API)
    key = [t for t in tags if t.startswith("apex-")]
    assert "apex" in tags and len(key) == 1
    assert client.head_manifest(NOVA_API, "apex") == client.head_manifest(NOVA_API, key[0])
    # The pushed image carries the patch.
    out = docker_client.containers.run(f"{local}/{NOVA_API}:apex", ["cat", "/srv/app/code.py"], remove=True,
                                       network_mode="host")
    assert out == b"new line\n"

    again = push_registry(RunContext(lab["options"](builder=builder), force=True))
    assert not [i for i in again.items if i.status == "rebuilt"], "same base and patches: nothing is built"
    assert client.tags(NOVA_API) == tags
    assert push_registry(RunContext(lab["options"](builder=builder))).status is Status.UP_TO_DATE


def test_patch_that_does_not_apply_fails_and_pushes_nothing(lab):
    work, local = lab["work"], lab["local"]
    _patch_context(work, local, BAD_PATCH)
    with pytest.raises(BuildError) as caught:
        push_registry(RunContext(lab["options"]()))
    assert "nova-api" in caught.value.message and "patch" in caught.value.message.lower()
    assert "FAILED" in caught.value.message or "hunk" in caught.value.message.lower()
    tags = RegistryClient(local, tls="http").tags(NOVA_API)
    assert tags == ["current-tripleo"], "nothing pushed"
    assert not (work / "docker-images.yaml").exists()


def test_missing_upstream_image_fails_the_target_naming_it(lab):
    client = RegistryClient(lab["upstream"].address, tls="http")
    digest, _ = client.head_manifest("tripleomaster/centos-binary-heat-engine", "current-tripleo")
    client.request("DELETE", f"/v2/tripleomaster/centos-binary-heat-engine/manifests/{digest}", ok=(202,))
    result = push_registry(RunContext(lab["options"]()))
    assert result.status is Status.FAILED
    failed = [i for i in result.items if i.status == "failed"]
    assert [i.name for i in failed] == ["tripleomaster/centos-binary-heat-engine"]
    assert "not found upstream" in failed[0].detail
    assert not (lab["work"] / "docker-images.yaml").exists()


def test_silent_upstream_is_planned_in_a_dry_run_and_stops_a_real_run(tmp_path):
    from apex_tools.core.errors import RegistryError

    upstream, local = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    data = {"work_dir": str(tmp_path / "work"), "registry": {"address": local},
            "upstream": {"registry": upstream, "insecure": True, "ceph_registry": upstream}}
    options = resolve([Layer("test", data)]).options
    planned = push_registry(RunContext(options, dry_run=True))
    assert f"upstream registry {upstream} unreachable: Connection refused" in planned.changes
    assert "a real run stops here: it needs the upstream registry" in planned.changes
    with pytest.raises(RegistryError, match=rf"upstream registry {upstream} does not answer at /v2/ \(Connection refused\)"):
        push_registry(RunContext(options))
    assert not RegistryClient(local, tls="http").ping(), "nothing was started"


def test_returning_to_an_earlier_patch_set_retags_without_building(lab):
    work, local = lab["work"], lab["local"]
    client = RegistryClient(local, tls="http")
    _patch_context(work, local, GOOD_PATCH)
    first = push_registry(RunContext(lab["options"]()))
    assert [i.status for i in first.items if i.name == NOVA_API][-1] == "rebuilt"
    first_digest = client.head_manifest(NOVA_API, "apex")

    other = GOOD_PATCH.replace("+new line", "+other line")
    _patch_context(work, local, other)
    second = push_registry(RunContext(lab["options"]()))
    assert [i.status for i in second.items if i.name == NOVA_API][-1] == "rebuilt"
    assert client.head_manifest(NOVA_API, "apex") != first_digest

    _patch_context(work, local, GOOD_PATCH)
    third = push_registry(RunContext(lab["options"]()))
    assert [i.status for i in third.items if i.name == NOVA_API][-1] == "retagged"
    assert client.head_manifest(NOVA_API, "apex") == first_digest
    assert len([t for t in client.tags(NOVA_API) if t.startswith("apex-")]) == 2
