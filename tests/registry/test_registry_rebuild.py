"""Rebuild planning inputs and the builders' error handling (real engine, real buildah)."""

from __future__ import annotations

import os
import shutil

import pytest

from apex_tools.builders import get_builder
from apex_tools.core.errors import BuildError, RegistryError, SettingsError
from apex_tools.registry.rebuild import context_digest, find_rebuilds, key_tag

from conftest import free_port, need


def _context(root, image, base="127.0.0.1:5000/tripleomaster/centos-binary-nova-api:current-tripleo"):
    folder = root / "containers" / image
    folder.mkdir(parents=True)
    (folder / "Dockerfile").write_text(f"# generated\nFROM {base}\nCOPY a.patch /tmp/\n")
    (folder / "a.patch").write_text("--- a/x\n+++ b/x\n")
    return folder


def test_find_rebuilds_from_the_plan_or_the_folder(tmp_path):
    _context(tmp_path, "nova-api")
    _context(tmp_path, "nova-compute", "127.0.0.1:5000/tripleomaster/centos-binary-nova-compute:current-tripleo")
    found = find_rebuilds(tmp_path / "containers", "192.0.2.1:8787")
    assert [(r.image, str(r.target)) for r in found] == [
        ("nova-api", "192.0.2.1:8787/tripleomaster/centos-binary-nova-api:apex"),
        ("nova-compute", "192.0.2.1:8787/tripleomaster/centos-binary-nova-compute:apex"),
    ]
    assert str(found[0].base) == "127.0.0.1:5000/tripleomaster/centos-binary-nova-api:current-tripleo"
    planned = find_rebuilds(tmp_path / "containers", "192.0.2.1:8787", {"nova-compute": {}})
    assert [r.image for r in planned] == ["nova-compute"], "a Dockerfile the plan no longer names is ignored"
    with pytest.raises(BuildError, match="missing, though patch-containers planned it"):
        find_rebuilds(tmp_path / "containers", "192.0.2.1:8787", {"heat-api": {}})


def test_context_digest_and_key_tag_follow_the_inputs(tmp_path):
    folder = _context(tmp_path, "nova-api")
    first = context_digest(folder)
    assert context_digest(folder) == first
    assert key_tag("sha256:aa", first) == key_tag("sha256:aa", first) != key_tag("sha256:bb", first)
    assert key_tag("sha256:aa", first).startswith("apex-") and len(key_tag("sha256:aa", first)) == 21
    os.chmod(folder / "a.patch", 0o755)
    assert context_digest(folder) != first, "the executable bit counts"
    os.chmod(folder / "a.patch", 0o644)
    (folder / "a.patch").write_text("--- a/x\n+++ b/y\n")
    assert context_digest(folder) != first


def test_unknown_builder_lists_the_valid_ones():
    with pytest.raises(SettingsError, match="unknown builder 'kaniko'") as caught:
        get_builder("kaniko")
    assert "buildah, docker" in caught.value.hint


@pytest.mark.parametrize("name", ["docker", "buildah"], ids=["docker-sdk", "buildah"])
def test_failing_build_raises_with_the_log_tail_and_push_errors_raise(name, tmp_path, registry, base_image,
                                                                     docker_client):
    if name == "buildah":
        need(shutil.which("buildah") is not None, "buildah")
    # Both builders pull the base from a registry, as they do from the local one in a deployment.
    base = f"{registry.address}/apex/base:latest"
    docker_client.images.get(base_image).tag(base)
    for line in docker_client.api.push(base.rsplit(":", 1)[0], "latest", stream=True, decode=True):
        assert "error" not in line, line
    unpushable = f"127.0.0.1:{free_port()}"
    builder = get_builder(name, [registry.address, unpushable])
    folder = tmp_path / "ctx"
    folder.mkdir()
    (folder / "Dockerfile").write_text(f"FROM {base}\nRUN echo building && echo 'no such hunk' >&2 && exit 3\n")
    with pytest.raises(BuildError) as caught:
        builder.build(folder, [f"{unpushable}/apex/failing:apex"])
    assert "no such hunk" in caught.value.message
    assert "failing" in caught.value.message and str(folder) in caught.value.hint

    (folder / "Dockerfile").write_text(f"FROM {base}\nRUN echo ok > /ok\n")
    ref = f"{unpushable}/apex/unpushable:apex"
    builder.build(folder, [ref])
    try:
        with pytest.raises(RegistryError, match="pushing .*unpushable:apex failed"):
            builder.push(ref)
    finally:
        builder.remove(ref)
