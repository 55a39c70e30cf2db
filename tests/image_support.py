"""The tool's image in tests: build it once per session, ``docker run`` it like a user does.

The fixtures (``wheelhouse``, ``tool_image``) live in ``tests/conftest.py``; this module holds
the plain helpers every image test file imports: ``run``, ``docker_run``, ``build_tool_image``.
The image is built as CI builds it: from a bookworm base made locally with debootstrap (no
pull), with the package installed from a wheelhouse (``pip wheel``, no PyPI in the build),
over ``--network host``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO

IMAGE = "apex-tools:test"
DOCKER_SOCKET = Path("/var/run/docker.sock")


def run(cmd: list[str], timeout: float = 600, check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run ``cmd``; on failure (when ``check``), fail with its command line and the tail of its output."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and proc.returncode != 0:
        output = (proc.stdout + proc.stderr)[-6000:]
        pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}:\n{output}")
    return proc


def build_wheelhouse(out: Path) -> Path:
    """The checkout's wheel and all its dependencies' wheels in ``out``, as README.md makes them."""
    run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "-w", str(out), str(REPO)])
    return out


def build_tool_image(base: str, wheelhouse: Path, context: Path, version: str, tag: str = IMAGE) -> str:
    """``docker build`` Containerfile on ``base`` with ``wheelhouse`` as the only package source."""
    shutil.copy(REPO / "Containerfile", context / "Containerfile")
    shutil.copy(REPO / ".dockerignore", context / ".dockerignore")
    shutil.copytree(wheelhouse, context / "wheels")
    run(["docker", "build", "--network", "host", "--build-arg", f"BASE={base}",
         "--build-arg", f"VERSION={version}", "-t", tag, "-f", "Containerfile", str(context)],
        timeout=1800)
    return tag


def docker_command(image: str, *args: str, name: str, entrypoint: str | None = None,
                   env: Mapping[str, str] | None = None, mounts: Iterable[Path | str] = (),
                   docker_socket: bool = False, workdir: Path | str | None = None) -> list[str]:
    """The ``docker run --rm --network host`` command line; ``mounts`` appear at identical paths.

    Identical paths matter: the host's engine resolves the paths apex hands it (build contexts,
    registry storage) on the host side.
    """
    cmd = ["docker", "run", "--rm", "--name", name, "--network", "host"]
    for key, value in (env or {}).items():
        cmd += ["-e", f"{key}={value}"]
    if docker_socket:
        cmd += ["-v", f"{DOCKER_SOCKET}:{DOCKER_SOCKET}"]
    for mount in mounts:
        cmd += ["-v", f"{mount}:{mount}"]
    if workdir is not None:
        cmd += ["-w", str(workdir)]
    if entrypoint:
        cmd += ["--entrypoint", entrypoint]
    return [*cmd, image, *args]


def docker_run(image: str, *args: str, entrypoint: str | None = None, env: Mapping[str, str] | None = None,
               mounts: Iterable[Path | str] = (), docker_socket: bool = False,
               workdir: Path | str | None = None, timeout: float = 300,
               check: bool = True) -> subprocess.CompletedProcess[str]:
    """``docker run --rm`` the image; the named container is removed even on a timeout.

    With ``check`` (the default) a non-zero exit fails the test with the output's tail.
    """
    name = f"apex-tools-test-{uuid.uuid4().hex[:8]}"
    cmd = docker_command(image, *args, name=name, entrypoint=entrypoint, env=env, mounts=mounts,
                         docker_socket=docker_socket, workdir=workdir)
    try:
        return run(cmd, timeout=timeout, check=check)
    finally:
        subprocess.run(["docker", "rm", "-f", "-v", name], capture_output=True)


def docker_output(image: str, *args: str, **kwargs: Any) -> str:
    """stdout and stderr of a successful ``docker_run``."""
    proc = docker_run(image, *args, **kwargs)
    return proc.stdout + proc.stderr
