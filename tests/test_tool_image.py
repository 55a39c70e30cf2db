"""What ships: the wheel carries the data trees, and the tool's image builds and answers.

The image (fixture ``tool_image`` in conftest.py, helpers in image_support.py) is built as CI
builds it: from a base made locally with debootstrap (no pull), with the package installed
from a wheelhouse (``pip wheel``), over ``--network host``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

import apex_tools
from apex_tools.core.resources import DATA_TREES

from conftest import REPO
from image_support import docker_output, run

TARGETS = ("fetch-images", "undercloud", "patch-containers", "ceph-loop", "push-registry", "deploy")


@pytest.fixture(scope="session")
def installed(wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with apex-tools installed from the wheel only (no checkout)."""
    venv = tmp_path_factory.mktemp("installed") / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
         "--disable-pip-version-check", "--no-index", "--find-links", str(wheelhouse), "apex-tools"])
    return venv


def installed_python(venv: Path, code: str) -> str:
    """Run ``code`` with the installed copy, from a folder where no checkout can be imported."""
    return run([str(venv / "bin" / "python"), "-c", code], cwd=venv).stdout.strip()


def test_installed_wheel_finds_a_bundled_scenario(installed: Path) -> None:
    found = Path(installed_python(installed, (
        "from apex_tools.core.resources import data_path; "
        "print(data_path('config', 'deploy', 'os-nosdn-nofeature-noha.yaml'))"
    )))
    assert found.is_file()
    assert installed in found.parents, f"{found} is not the installed copy"


@pytest.mark.parametrize("tree", DATA_TREES, ids=lambda tree: f"{tree}/")
def test_installed_wheel_carries_every_file_of_the_data_tree(installed: Path, tree: str) -> None:
    root = Path(installed_python(installed, f"from apex_tools.core.resources import data_path; print(data_path('{tree}'))"))

    def files(base: Path) -> set[str]:
        return {str(p.relative_to(base)) for p in base.rglob("*") if p.is_file() and "__pycache__" not in p.parts}

    assert installed in root.parents
    shipped = files(root)
    assert shipped, f"the wheel carries no file of {tree}/"
    assert shipped == files(REPO / tree)


def test_installed_apex_lists_the_six_targets(installed: Path) -> None:
    out = run([str(installed / "bin" / "apex"), "--list"], cwd=installed).stdout
    listed = {line.split()[0] for line in out.splitlines() if line.startswith("  ")}
    assert set(TARGETS) <= listed


# --- the tool's image -------------------------------------------------------------------------


@pytest.mark.slow
def test_image_lists_the_six_targets(tool_image: str) -> None:
    out = docker_output(tool_image, "--list")
    listed = {line.split()[0] for line in out.splitlines() if line.startswith("  ")}
    assert set(TARGETS) <= listed, out


@pytest.mark.slow
def test_image_shows_the_deploy_help(tool_image: str) -> None:
    out = docker_output(tool_image, "deploy", "--help")
    assert "Usage: apex [--core-opts] deploy" in out
    assert "--dry-run" in out and "--force" in out


@pytest.mark.slow
def test_image_without_arguments_prints_help(tool_image: str) -> None:
    assert "Usage: apex" in docker_output(tool_image)


@pytest.mark.slow
def test_image_finds_the_bundled_scenario(tool_image: str) -> None:
    code = "from apex_tools.core.resources import data_path; print(data_path('config', 'deploy'))"
    folder = docker_output(tool_image, "-c", code, entrypoint="python").strip()
    assert folder.startswith("/opt/apex-tools/lib/")
    listing = docker_output(tool_image, folder, entrypoint="ls").split()
    assert "os-nosdn-nofeature-noha.yaml" in listing


@pytest.mark.slow
def test_image_carries_oci_labels(docker_client: Any, tool_image: str) -> None:
    labels = docker_client.images.get(tool_image).labels
    assert labels["org.opencontainers.image.title"] == "apex-tools"
    assert labels["org.opencontainers.image.version"] == apex_tools.__version__
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"


@pytest.mark.slow
@pytest.mark.parametrize("tool", ["buildah", "skopeo", "qemu-img", "virt-customize", "ansible-playbook",
                                  "ssh", "tini", "patch", "docker-registry"])
def test_image_has_the_tools_targets_call(tool_image: str, tool: str) -> None:
    out = docker_output(tool_image, "-c", f"command -v {tool}", entrypoint="sh")
    assert out.strip().startswith("/")


@pytest.mark.slow
def test_image_libguestfs_launches_its_appliance(tool_image: str) -> None:
    # The kernel libguestfs boots is the image's own; no privileges, TCG as on these machines.
    out = docker_output(tool_image, entrypoint="libguestfs-test-tool",
                     env={"LIBGUESTFS_BACKEND_SETTINGS": "force_tcg"}, timeout=600)
    assert "===== TEST FINISHED OK =====" in out

