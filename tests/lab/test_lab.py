"""The lab for real: ``apex lab up`` / ``lab down`` with pidfiles, then the lab's chain twice
end to end (every target changed, then every target up to date).

Each test runs its own lab on free loopback ports with a temp work dir (a developer's running
lab on config/lab.yaml's fixed ports is never touched), and stops it even when it fails.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from apex_tools.core.workdir import IPA_TAR, OVERCLOUD_TAR
from apex_tools.lab import artifacts
from apex_tools.lab.stand import lab_running, mirror_paths, upstream_root
from apex_tools.registry.client import RegistryClient

from conftest import need
from lab_support import CHAIN, NOVA_IMAGES, apex, lab_env, lab_options, run_chain, running_lab
from registry_support import forget_images

LAB_TOOLS = ("nginx", "docker-registry", "mkfs.xfs", "xfs_db", "qemu-img", "busybox", "dash", "patch")


def _need_lab_tools() -> None:
    missing = [t for t in LAB_TOOLS if shutil.which(t) is None and not Path("/usr/sbin", t).exists()]
    need(not missing, f"the lab's tools ({', '.join(missing)}; scripts/debian-packages.txt)")


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_artifacts_are_the_same_bytes_every_time(tmp_path: Path) -> None:
    _need_lab_tools()
    artifacts.write_artifacts(tmp_path / "a")
    artifacts.write_artifacts(tmp_path / "b")
    for name in (OVERCLOUD_TAR, IPA_TAR, f"{OVERCLOUD_TAR}.md5"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    md5 = (tmp_path / "a" / f"{OVERCLOUD_TAR}.md5").read_text().split()[0]
    assert md5 == hashlib.md5((tmp_path / "a" / OVERCLOUD_TAR).read_bytes()).hexdigest()


def test_lab_refuses_an_address_off_loopback(tmp_path: Path) -> None:
    with running_lab(tmp_path) as env:
        env["APEX_UPSTREAM_REGISTRY"] = "192.0.2.10:8782"
        proc = apex(["lab", "up"], env, tmp_path, check=False)
        assert proc.returncode != 0
        assert "upstream.registry: '192.0.2.10:8782' is not on loopback" in proc.stderr, proc.stderr
        assert not (Path(env["APEX_WORK_DIR"]) / "lab" / "mirror" / "nginx.pid").exists()


def test_seed_images_are_deterministic_and_share_their_base(tmp_path: Path) -> None:
    _need_lab_tools()
    from apex_tools.catalog.images import load_catalog
    from apex_tools.core.run import RunContext
    from apex_tools.lab.images import seed_images
    from apex_tools.patching.patches import load_projects
    from apex_tools.registry.deployment import deployment_images, naming_of

    run = RunContext(lab_options(lab_env(tmp_path)))
    catalog = load_catalog(run.os_version)
    selected = deployment_images(catalog, run.deploy_settings, naming_of(run))

    def projects(name: str) -> tuple[str, ...]:
        return catalog.images[name].projects if name in catalog.images else ()

    first = seed_images(selected, projects, load_projects(), run.os_version)
    second = seed_images(selected, projects, load_projects(), run.os_version)
    assert [s.manifest().digest for s in first] == [s.manifest().digest for s in second]
    assert len(first) == len(selected) and len({s.manifest().digest for s in first}) == len(first)
    by_name = {s.repository.rsplit("centos-binary-", 1)[-1]: s for s in first}
    assert len({s.layers[0].digest for s in first}) == 1  # one base layer for all
    nova = {by_name[n].layers[1].digest for n in NOVA_IMAGES}
    assert len(nova) == 1 and by_name["keystone"].layers[1].digest not in nova  # nova's code tree, shared


def test_lab_up_starts_leaves_alone_and_down_stops(tmp_path: Path) -> None:
    _need_lab_tools()
    with running_lab(tmp_path) as env:
        options = lab_options(env)
        first = apex(["lab", "up"], env, tmp_path).stdout
        assert "image mirror" in first and "started" in first, first
        pids = lab_running(options)
        assert all(pids.values()), pids
        assert all(_alive(p) for p in pids.values())
        assert (mirror_paths(options).pid).is_file()
        assert (upstream_root(options) / "registry" / "registry.pid").is_file()
        # The local registry: the pidfile and storage push-registry itself would use.
        assert (Path(options.work_dir) / "registry" / "registry.pid").is_file()

        # The mirror serves the generated artifacts with RDO's .md5 sidecars.
        base = env["APEX_UPSTREAM_IMAGES_URL"].replace("{os_version}", "master")
        tar = requests.get(base + OVERCLOUD_TAR, timeout=10)
        assert tar.status_code == 200 and tar.headers.get("ETag") and tar.headers.get("Last-Modified")
        sidecar = requests.get(base + OVERCLOUD_TAR + ".md5", timeout=10).text
        assert sidecar.split()[0] == hashlib.md5(tar.content).hexdigest()
        assert requests.get(base + IPA_TAR + ".md5", timeout=10).status_code == 200
        # The upstream registry holds the scenario's images, nova's with the code the lab patch changes.
        upstream = RegistryClient(env["APEX_UPSTREAM_REGISTRY"], tls="http")
        assert upstream.head_manifest("tripleomaster/centos-binary-nova-api", "current-tripleo") is not None
        assert upstream.head_manifest("tripleomaster/centos-binary-keystone", "current-tripleo") is not None

        docroot_tar = next(mirror_paths(options).docroot.rglob(OVERCLOUD_TAR))
        before = (_sha(docroot_tar), docroot_tar.stat().st_mtime_ns)

        # Running: left alone (same pids, nothing generated or pushed again).
        again = apex(["lab", "up"], env, tmp_path).stdout
        assert "started" not in again and "generated" not in again and "seeded" not in again, again
        assert lab_running(options) == pids
        assert (_sha(docroot_tar), docroot_tar.stat().st_mtime_ns) == before

        down = apex(["lab", "down"], env, tmp_path).stdout
        assert down.count("stopped") == 3, down
        assert not any(_alive(p) for p in pids.values())
        assert not mirror_paths(options).pid.exists()
        assert lab_running(options) == {"image mirror": None, "upstream registry": None, "local registry": None}
        assert "stopped" not in apex(["lab", "down"], env, tmp_path).stdout

        # Up again after down: the generated files are reused, not made again.
        assert "generated" not in apex(["lab", "up"], env, tmp_path).stdout
        assert (_sha(docroot_tar), docroot_tar.stat().st_mtime_ns) == before


@pytest.fixture(scope="module")
def lab_runs(tmp_path_factory: pytest.TempPathFactory, docker_client: Any) -> Iterator[dict[str, Any]]:
    """The lab's chain run twice in one fresh lab; both runs' summaries."""
    _need_lab_tools()
    need(shutil.which("virt-customize") is not None, "libguestfs-tools")
    root = tmp_path_factory.mktemp("lab")
    with running_lab(root) as env:
        try:
            first = run_chain(env, root)
            second = run_chain(env, root)
            yield {"env": env, "first": first, "second": second, "options": lab_options(env)}
        finally:
            forget_images(docker_client, [env["APEX_REGISTRY_ADDRESS"], env["APEX_UPSTREAM_REGISTRY"]])


def test_first_run_does_every_target_for_real(lab_runs: dict[str, Any]) -> None:
    first = lab_runs["first"]
    for name in CHAIN:
        assert first[name]["status"] == "changed", first[name]
    fetched = {i["name"]: i["status"] for i in first["fetch-images"]["items"]}
    assert set(fetched) >= {OVERCLOUD_TAR, IPA_TAR}, fetched
    rebuilt = sorted(i["name"].rsplit("centos-binary-", 1)[1] for i in first["push-registry"]["items"]
                     if i["status"] == "rebuilt")
    assert rebuilt == sorted(NOVA_IMAGES)
    if "deploy" in first:  # once the deploy target lands: it stops before TripleO, naming the command
        assert first["deploy"]["status"] == "ready", first["deploy"]
        assert any("deploy_command" in line for line in first["deploy"]["changes"]), first["deploy"]


def test_second_run_is_all_up_to_date(lab_runs: dict[str, Any]) -> None:
    second = lab_runs["second"]
    for name in CHAIN:
        assert second[name]["status"] == "up to date", second[name]
    if "deploy" in second:
        assert second["deploy"]["status"] in ("up to date", "ready"), second["deploy"]


def test_outputs_name_the_patched_images_and_the_patched_disk(lab_runs: dict[str, Any], docker_client: Any) -> None:
    options = lab_runs["options"]
    work = Path(options.work_dir)
    local = lab_runs["env"]["APEX_REGISTRY_ADDRESS"]
    params = yaml.safe_load((work / "docker-images.yaml").read_text())["parameter_defaults"]
    assert params["ContainerNovaApiImage"] == f"{local}/tripleomaster/centos-binary-nova-api:apex"
    assert params["ContainerKeystoneImage"] == f"{local}/tripleomaster/centos-binary-keystone:current-tripleo"
    out = docker_client.containers.run(
        f"{local}/tripleomaster/centos-binary-nova-scheduler:apex",
        ["cat", "/usr/lib/python3.9/site-packages/nova/version.py"], remove=True, network_mode="host")
    assert b"PATCHED = True" in out
    manifest = yaml.safe_load((work / "image_patches" / "overcloud" / "manifest.json").read_text())
    assert [m["target_dir"] for m in manifest] == ["/etc/puppet/modules/tripleo"]
    assert (work / "overcloud-full.qcow2").is_file() and (work / "storage-environment.yaml").is_file()
