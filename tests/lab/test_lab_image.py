"""The lab from the tool's image, as CI runs it: ``docker run --rm --network host`` with the
docker socket and the work dir mounted at identical paths, ``apex-tools lab up`` then
``apex-tools deploy --lab``, twice; the second deployment is all up to date. And once as the
README shows it, without the socket.

Every container's stand-ins end with it; the next ``lab up`` starts them again over the same
files and registry storage, so nothing is generated, pushed or downloaded a second time.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from apex_tools.registry.server import CONTAINER_LABEL

from conftest import need
from lab_support import CHAIN, NOVA_IMAGES, json_documents, lab_env, placeholders
from registry_support import forget_images

PASSED = ("APEX_", "LIBGUESTFS_")


def _docker_run(image: str, root: Path, env: dict[str, str], *args: str, shell: str = "", socket: bool = True) -> str:
    """``docker run --rm`` the image with the socket (unless not ``socket``) and ``root`` mounted at
    the same path; the named container is removed even on a timeout. ``shell``: run that ``sh -c``
    script instead."""
    name = f"apex-tools-lab-{uuid.uuid4().hex[:8]}"
    cmd = ["docker", "run", "--rm", "--name", name, "--network", "host", "-v", f"{root}:{root}"]
    if socket:
        cmd[-2:-2] = ["-v", "/var/run/docker.sock:/var/run/docker.sock"]
    for key, value in sorted(env.items()):
        if key.startswith(PASSED) and key != "APEX_TEST_REQUIRE_ALL":
            cmd += ["-e", f"{key}={value}"]
    if shell:
        cmd += ["--entrypoint", "sh", image, "-c", shell]
    else:
        cmd += [image, *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, stdin=subprocess.DEVNULL)
    finally:
        subprocess.run(["docker", "rm", "-f", "-v", name], capture_output=True)
    if proc.returncode != 0:
        pytest.fail(f"docker run {image} {shell or ' '.join(args)} exited {proc.returncode}:\n"
                    f"{(proc.stdout + proc.stderr)[-6000:]}")
    return proc.stdout


def _deploy_lab(image: str, root: Path, env: dict[str, str], socket: bool = True) -> dict[str, dict[str, Any]]:
    """``deploy --lab`` in the image; where undercloud/deploy are still placeholders, the built
    targets under the image's own config/lab.yaml instead (see lab_support.run_chain)."""
    missing = placeholders()
    if not missing:
        rows = json_documents(_docker_run(image, root, env, "deploy", "--lab", "--json", socket=socket))[0]
        return {row["target"]: row for row in rows}
    lab_file = "$(python3 -c 'from apex_tools.lab.stand import lab_config_path; print(lab_config_path())')"
    tasks = " ".join(f"{name} --json" for name in CHAIN)
    out = _docker_run(image, root, env, shell=f'apex -f "{lab_file}" lab up --quiet {tasks}', socket=socket)
    return {row["target"]: row for doc in json_documents(out) for row in doc}


def _tool_image(request: pytest.FixtureRequest) -> str:
    """The session's tool image (built once), or a skip (a failure in CI) naming what is missing."""
    need(shutil.which("docker") is not None, "the docker command line (Debian package docker.io)")
    try:
        return str(request.getfixturevalue("tool_image"))
    except pytest.FixtureLookupError:
        need(False, "the shared tool_image fixture (tests/conftest.py, tests/image_support.py)")
        raise


@pytest.mark.slow
def test_image_runs_the_lab_twice(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                                  docker_client: Any) -> None:
    image = _tool_image(request)
    root = tmp_path_factory.mktemp("lab-image")
    env = lab_env(root)
    try:
        runs = []
        for _ in range(2):
            up = _docker_run(image, root, env, "lab", "up")
            assert "image mirror" in up and "upstream registry" in up, up
            runs.append(_deploy_lab(image, root, env))
        first, second = runs
        for name in CHAIN:
            assert first[name]["status"] == "changed", first[name]
            assert second[name]["status"] == "up to date", second[name]
        rebuilt = sorted(i["name"].rsplit("centos-binary-", 1)[1] for i in first["push-registry"]["items"]
                         if i["status"] == "rebuilt")
        assert rebuilt == sorted(NOVA_IMAGES)
        if "deploy" in second:
            assert first["deploy"]["status"] == "ready" and second["deploy"]["status"] in ("ready", "up to date")
        # The second lab up found the generated files and the seeded storage in the work dir.
        assert "generated" not in up and "seeded" not in up, up
    finally:
        # lab down from inside the image stops the registries it started beside its container.
        with contextlib.suppress(BaseException):
            _docker_run(image, root, env, "lab", "down")
        left = [c.name for c in docker_client.containers.list(filters={"label": CONTAINER_LABEL})
                if str(root) in c.labels.get(CONTAINER_LABEL, "")]
        forget_images(docker_client, [env["APEX_REGISTRY_ADDRESS"], env["APEX_UPSTREAM_REGISTRY"]])
    assert left == [], f"lab down left registry containers running: {left}"


@pytest.mark.slow
def test_image_runs_the_lab_without_the_docker_socket(request: pytest.FixtureRequest,
                                                      tmp_path_factory: pytest.TempPathFactory) -> None:
    """README's ``docker run apex-tools deploy --lab`` line: no socket; the nova images are rebuilt
    natively and the stand-ins and registries run in the container, ending with it."""
    image = _tool_image(request)
    root = tmp_path_factory.mktemp("lab-image-no-socket")
    rows = _deploy_lab(image, root, lab_env(root), socket=False)
    for name in CHAIN:
        assert rows[name]["status"] == "changed", rows[name]
    rebuilt = {i["name"].rsplit("centos-binary-", 1)[1]: i["detail"] for i in rows["push-registry"]["items"]
               if i["status"] == "rebuilt"}
    assert sorted(rebuilt) == sorted(NOVA_IMAGES)
    assert all(detail.endswith("(native)") for detail in rebuilt.values()), rebuilt
