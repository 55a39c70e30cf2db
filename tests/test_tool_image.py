"""What ships: the wheel carries the data trees, and the tool's image builds and answers.

The image is built as CI builds it: from a base made locally with debootstrap (no pull), with
the package installed from a wheelhouse (``pip wheel``), over ``--network host``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

import apex_tools
from apex_tools.core.resources import DATA_TREES

from conftest import REPO, need

TARGETS = ("fetch-images", "undercloud", "patch-containers", "ceph-loop", "push-registry", "deploy")
IMAGE = "apex-tools:test"


def run(cmd: list[str], timeout: float = 600, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run ``cmd``; on failure, fail with its command line and the tail of its output."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    if proc.returncode != 0:
        output = (proc.stdout + proc.stderr)[-6000:]
        pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}:\n{output}")
    return proc


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkout's wheel and all its dependencies' wheels, as README.md makes them."""
    out = tmp_path_factory.mktemp("wheels")
    run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "-w", str(out), str(REPO)])
    return out


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


@pytest.fixture(scope="session")
def tool_image(docker_client: Any, debian_image: Any, wheelhouse: Path,
               tmp_path_factory: pytest.TempPathFactory) -> str:
    """``apex-tools:test`` built from Containerfile on a local bookworm base, from the wheelhouse."""
    need(shutil.which("docker") is not None, "the docker CLI (Debian package docker.io)")
    # python3-venv in the base lets the builder stage skip apt altogether.
    base = debian_image("python3", "python3-venv")
    context = tmp_path_factory.mktemp("image-context")
    shutil.copy(REPO / "Containerfile", context / "Containerfile")
    shutil.copy(REPO / ".dockerignore", context / ".dockerignore")
    shutil.copytree(wheelhouse, context / "wheels")
    run(["docker", "build", "--network", "host", "--build-arg", f"BASE={base}",
         "--build-arg", f"VERSION={apex_tools.__version__}", "-t", IMAGE, "-f", "Containerfile", str(context)],
        timeout=1800)
    return IMAGE


def docker_run(image: str, *args: str, entrypoint: str | None = None, env: dict[str, str] | None = None,
               timeout: float = 300) -> str:
    """``docker run --rm`` the image; the named container is removed even on a timeout."""
    name = f"apex-tools-test-{uuid.uuid4().hex[:8]}"
    cmd = ["docker", "run", "--rm", "--name", name, "--network", "host"]
    for key, value in (env or {}).items():
        cmd += ["-e", f"{key}={value}"]
    if entrypoint:
        cmd += ["--entrypoint", entrypoint]
    try:
        proc = run([*cmd, image, *args], timeout=timeout)
    finally:
        subprocess.run(["docker", "rm", "-f", "-v", name], capture_output=True)
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_image_lists_the_six_targets(tool_image: str) -> None:
    out = docker_run(tool_image, "--list")
    listed = {line.split()[0] for line in out.splitlines() if line.startswith("  ")}
    assert set(TARGETS) <= listed, out


@pytest.mark.slow
def test_image_shows_the_deploy_help(tool_image: str) -> None:
    out = docker_run(tool_image, "deploy", "--help")
    assert "Usage: apex [--core-opts] deploy" in out
    assert "--dry-run" in out and "--force" in out


@pytest.mark.slow
def test_image_without_arguments_prints_help(tool_image: str) -> None:
    assert "Usage: apex" in docker_run(tool_image)


@pytest.mark.slow
def test_image_finds_the_bundled_scenario(tool_image: str) -> None:
    code = "from apex_tools.core.resources import data_path; print(data_path('config', 'deploy'))"
    folder = docker_run(tool_image, "-c", code, entrypoint="python").strip()
    assert folder.startswith("/opt/apex-tools/lib/")
    listing = docker_run(tool_image, folder, entrypoint="ls").split()
    assert "os-nosdn-nofeature-noha.yaml" in listing


@pytest.mark.slow
def test_image_carries_oci_labels(docker_client: Any, tool_image: str) -> None:
    labels = docker_client.images.get(tool_image).labels
    assert labels["org.opencontainers.image.title"] == "apex-tools"
    assert labels["org.opencontainers.image.version"] == apex_tools.__version__
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"


@pytest.mark.slow
@pytest.mark.parametrize("tool", ["buildah", "skopeo", "qemu-img", "virt-customize", "ansible-playbook",
                                  "ssh", "tini", "patch"])
def test_image_has_the_tools_targets_call(tool_image: str, tool: str) -> None:
    out = docker_run(tool_image, "-c", f"command -v {tool}", entrypoint="sh")
    assert out.strip().startswith("/")


@pytest.mark.slow
def test_image_libguestfs_launches_its_appliance(tool_image: str) -> None:
    # The kernel libguestfs boots is the image's own; no privileges, TCG as on these machines.
    out = docker_run(tool_image, entrypoint="libguestfs-test-tool",
                     env={"LIBGUESTFS_BACKEND_SETTINGS": "force_tcg"}, timeout=600)
    assert "===== TEST FINISHED OK =====" in out

