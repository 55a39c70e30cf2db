"""patch-containers end to end: a fake Gerrit, a real loopback registry holding the upstream
images, real Dockerfiles built with the real engine and with buildah."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from apex_tools.core.config import Layer, resolve
from apex_tools.targets.patch_containers import ARCHIVE, TARGET, patch_containers
from apex_tools.core.errors import GerritError, PatchError
from apex_tools.core.run import RunContext, Status
from conftest import REPO, check_golden, need, run_registry
from fake_gerrit import FakeChange, git_patch, run_fake_gerrit

NOVA = "I" + "a" * 40
PUPPET = "I" + "b" * 40
UNDER = "I" + "c" * 40
DEAD = "I" + "d" * 40
NOVA_PATCH = git_patch(NOVA, {
    "nova/api.py": ('def hello():\n    return "old"\n', 'def hello():\n    return "new"\n'),
    "nova/tests/unit/test_api.py": ("t = 1\n", "t = 2\n"),
    "releasenotes/notes/hello-new.yaml": ("", "fixes:\n  - hello says new\n"),
    "setup.cfg": ("[metadata]\n", "[metadata]\nname = nova\n"),
})
PUPPET_PATCH = git_patch(PUPPET, {"manifests/profile/base/nova.pp": ("a\n", "b\n"),
                                  "spec/classes/nova_spec.rb": ("c\n", "d\n")})
UNDER_PATCH = git_patch(UNDER, {"tripleo_common/actions/base.py": ("x\n", "y\n")})
# Images of the upstream registry; nova-libvirt is left out on purpose (reported missing).
UPSTREAM_NOVA = ["nova-api", "nova-compute", "nova-conductor", "nova-novncproxy", "nova-scheduler"]
SITE = "/usr/lib/python3/dist-packages"
ODL_STEIN = "{}/tripleostein/centos-binary-opendaylight"


@pytest.fixture(scope="module")
def upstream(tmp_path_factory, docker_client, base_image, debian_image):
    """A loopback registry with small upstream service images (user 1000), and a patchable nova-api."""
    with run_registry(tmp_path_factory.mktemp("upstream")) as reg:
        service = f"{reg.address}/tripleomaster/centos-binary-"
        docker_client.images.build(fileobj=io.BytesIO(f"FROM {base_image}\nUSER 1000\n".encode()),
                                   tag=f"{service}nova-api:current-tripleo", network_mode="host", rm=True)
        for name in UPSTREAM_NOVA + ["opendaylight"]:
            docker_client.api.tag(f"{service}nova-api:current-tripleo", f"{service}{name}", "current-tripleo")
            docker_client.images.push(f"{service}{name}", "current-tripleo")
        # OpenDaylight left TripleO after stein: its test deploys stein.
        docker_client.api.tag(f"{service}nova-api:current-tripleo", ODL_STEIN.format(reg.address), "current-tripleo")
        docker_client.images.push(ODL_STEIN.format(reg.address), "current-tripleo")
        # The build tests' base: a site-packages tree owned by the image's non-root user.
        dockerfile = (
            f"FROM {debian_image('patch', 'python3-minimal')}\n"
            "RUN useradd -u 4242 -M nova && mkdir -p " + SITE + "/nova && touch " + SITE + "/nova/__init__.py"
            " && printf 'def hello():\\n    return \"old\"\\n' > " + SITE + "/nova/api.py\n"
            "USER nova\n"
        )
        tag = f"{reg.address}/buildtest/centos-binary-nova-api"
        docker_client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=f"{tag}:current-tripleo",
                                   network_mode="host", rm=True)
        docker_client.images.push(tag, "current-tripleo")
        try:
            yield reg
        finally:
            for name in [f"{service}{n}:current-tripleo" for n in UPSTREAM_NOVA + ["opendaylight"]] + [
                    f"{tag}:current-tripleo", ODL_STEIN.format(reg.address) + ":current-tripleo"]:
                with contextlib.suppress(Exception):
                    docker_client.images.remove(name, force=True)


@pytest.fixture
def gerrit():
    with run_fake_gerrit() as fake:
        fake.add(FakeChange("openstack/nova", "master", NOVA, NOVA_PATCH))
        fake.add(FakeChange("openstack/puppet-tripleo", "master", PUPPET, PUPPET_PATCH, patchset=4))
        fake.add(FakeChange("openstack/tripleo-common", "master", UNDER, UNDER_PATCH))
        fake.add(FakeChange("openstack/nova", "master", DEAD, NOVA_PATCH, status="ABANDONED"))
        yield fake


def write_yaml(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def make_run(tmp_path: Path, gerrit_url: str, registry: str, *, overcloud=(), undercloud=(),
             deploy_options: dict[str, Any] | None = None, **config: Any) -> RunContext:
    """A RunContext on ``tmp_path/work`` with these patches and options; ``config`` overrides keys."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    settings = write_yaml(tmp_path / "deploy.yaml", {
        "global_params": {"ha_enabled": False, "patches": {
            "overcloud": [{"change-id": c, "project": p} for p, c in overcloud],
            "undercloud": [{"change-id": c, "project": p} for p, c in undercloud]}},
        "deploy_options": {"os_version": "master", **(deploy_options or {})},
    })
    common = write_yaml(tmp_path / "common.yaml", {"patches": {}})
    data: dict[str, Any] = {
        "deploy_settings": str(settings), "patches_file": str(common), "work_dir": str(tmp_path / "work"),
        "gerrit": {"url": gerrit_url, "tries": 1, "timeout": 5.0},
        "upstream": {"registry": registry, "insecure": True},
        "registry": {"address": registry},
        "patching": {"python_path": SITE},
    }
    for key, value in config.items():
        section, _, leaf = key.partition("__")
        if leaf:
            data.setdefault(section, {})[leaf] = value
        else:
            data[key] = value
    return RunContext(resolve([Layer("test", data)]).options, force=False)


def files_under(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_sorts_patches_writes_dockerfiles_manifests_and_state(tmp_path, gerrit, upstream):
    run = make_run(tmp_path, gerrit.url, upstream.address,
                   overcloud=[("openstack/nova", NOVA), ("openstack/puppet-tripleo", PUPPET),
                              ("openstack/nova", DEAD)],
                   undercloud=[("openstack/tripleo-common", UNDER)])
    result = patch_containers(run)
    assert result.status is Status.CHANGED
    work = tmp_path / "work"
    assert sorted(p.name for p in (work / "containers").iterdir()) == UPSTREAM_NOVA
    api = work / "containers" / "nova-api"
    assert sorted(p.name for p in api.iterdir()) == ["01-" + NOVA + ".patch", "Dockerfile"]
    patch = (api / f"01-{NOVA}.patch").read_text()
    assert "nova/api.py" in patch and "tests/" not in patch and "releasenotes" not in patch and "setup.cfg" not in patch
    dockerfile = (api / "Dockerfile").read_text()
    assert dockerfile.startswith("# Generated by apex-tools") and "--fuzz=0" in dockerfile and "|| echo" not in dockerfile
    check_golden("Dockerfile.nova-api", dockerfile.replace(upstream.address, "REGISTRY").replace(
        gerrit.changes[next(iter(gerrit.changes))].revision, "REVISION"))

    overcloud = json.loads((work / "image_patches" / "overcloud" / "manifest.json").read_text())
    assert [(m["project"], m["change_id"], m["file"], m["target_dir"], m["strip"]) for m in overcloud] == [
        ("openstack/puppet-tripleo", PUPPET, f"01-{PUPPET}.patch", "/etc/puppet/modules/tripleo", 1)]
    assert "spec/" not in (work / "image_patches" / "overcloud" / overcloud[0]["file"]).read_text()
    undercloud = json.loads((work / "image_patches" / "undercloud" / "manifest.json").read_text())
    assert [(m["project"], m["target_dir"]) for m in undercloud] == [("openstack/tripleo-common", SITE)]

    data = run.state.load(TARGET).data
    assert sorted(data["rebuild"]) == UPSTREAM_NOVA
    assert data["rebuild"]["nova-api"]["user"] == "1000"
    assert data["rebuild"]["nova-api"]["from"] == f"{upstream.address}/tripleomaster/centos-binary-nova-api:current-tripleo"
    assert data["rebuild"]["nova-api"]["patches"][0]["change_id"] == NOVA
    assert data["missing_upstream"] == {"nova-libvirt": f"{upstream.address}/tripleomaster/centos-binary-nova-libvirt:current-tripleo"}
    reasons = {(s["change_id"], s.get("image", "")): s["reason"] for s in data["skipped"]}
    assert reasons[(DEAD, "")] == "change is ABANDONED"
    assert "not found upstream" in reasons[(NOVA, "nova-libvirt")]
    statuses = {(i.name, i.status) for i in result.items}
    assert ("nova-libvirt", "missing upstream") in statuses and ("nova-api", "to rebuild") in statuses
    # Counted at 80 columns; each image's row (the patches it takes) is an item (--verbose).
    assert f"{len(UPSTREAM_NOVA)} images to rebuild" in result.changes
    assert not any(": rebuild with" in c for c in result.changes)
    assert any(i.name == "nova-api" and i.detail.startswith("openstack/nova " + NOVA) for i in result.items)


def read_archive(path: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(path) as tar:
        return tar.getmembers()


def test_rerun_is_up_to_date_and_the_archive_is_reproducible(tmp_path, gerrit, upstream):
    run = make_run(tmp_path, gerrit.url, upstream.address, overcloud=[("openstack/nova", NOVA)])
    assert patch_containers(run).status is Status.CHANGED
    archive = tmp_path / "work" / ARCHIVE
    first, mtime = archive.read_bytes(), archive.stat().st_mtime_ns
    requests_before = len(gerrit.requests)
    again = patch_containers(run)
    assert (again.status, again.changes) == (Status.UP_TO_DATE, ["up to date"])
    assert archive.stat().st_mtime_ns == mtime
    # Only the change lookup goes out again; the patch of a known revision comes from the cache.
    assert all("/revisions/" not in r for r in gerrit.requests[requests_before:])

    shutil.rmtree(tmp_path / "work" / "containers")
    archive.unlink()
    (tmp_path / "work" / "cache").rename(tmp_path / "old-cache")  # a cold cache, same inputs
    assert patch_containers(run).status is Status.CHANGED
    assert archive.read_bytes() == first
    members = read_archive(archive)
    assert [m.name for m in members] == sorted(m.name for m in members)
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, 0, "root", "root")}
    assert "containers/nova-api/Dockerfile" in [m.name for m in members]
    assert first[4:8] == b"\0\0\0\0", "gzip header mtime must be 0"
    assert gzip.decompress(first)  # a valid gzip stream


def test_no_fetch_rerun_works_offline(tmp_path, upstream):
    with run_fake_gerrit() as fake:
        fake.add(FakeChange("openstack/nova", "master", NOVA, NOVA_PATCH))
        online = make_run(tmp_path, fake.url, upstream.address, overcloud=[("openstack/nova", NOVA)])
        patch_containers(online)
    dockerfile = (tmp_path / "work" / "containers" / "nova-api" / "Dockerfile").read_bytes()
    # Gerrit is gone and the registry unused: everything comes from the work dir's cache.
    offline = make_run(tmp_path, fake.url, "127.0.0.1:9", overcloud=[("openstack/nova", NOVA)], no_fetch=True,
                       upstream__registry=upstream.address, registry__address=upstream.address)
    assert patch_containers(offline).status is Status.UP_TO_DATE
    offline.force = True
    assert patch_containers(offline).status is Status.CHANGED
    assert (tmp_path / "work" / "containers" / "nova-api" / "Dockerfile").read_bytes() == dockerfile


@pytest.mark.parametrize(
    "submitted, applied",
    [("2018-06-11 15:23:55.000000000", False), ("2099-01-01 00:00:00.000000000", True)],
    ids=["merged-before-image-built-skipped", "merged-after-image-built-applied"],
)
def test_merged_change_is_skipped_when_already_in_the_upstream_image(tmp_path, upstream, submitted, applied):
    with run_fake_gerrit() as fake:
        fake.add(FakeChange("openstack/nova", "master", NOVA, NOVA_PATCH, status="MERGED", submitted=submitted))
        run = make_run(tmp_path, fake.url, upstream.address, overcloud=[("openstack/nova", NOVA)])
        patch_containers(run)
    data = run.state.load(TARGET).data
    assert ("nova-api" in data["rebuild"]) is applied
    merged_skips = [s for s in data["skipped"] if "already in the upstream image" in s["reason"]]
    assert len(merged_skips) == (0 if applied else len(UPSTREAM_NOVA))


def test_dry_run_plans_and_touches_nothing(tmp_path, gerrit, upstream):
    run = make_run(tmp_path, gerrit.url, upstream.address, overcloud=[("openstack/nova", NOVA)])
    run.dry_run = True
    result = patch_containers(run)
    assert result.status is Status.PLANNED
    assert any(c.startswith("nova-api: rebuild with") for c in result.changes)
    assert not (tmp_path / "work").exists()


def test_dry_run_offline_without_cache_lists_what_it_cannot_plan(tmp_path, gerrit, upstream):
    run = make_run(tmp_path, gerrit.url, upstream.address, overcloud=[("openstack/nova", NOVA)], no_fetch=True)
    run.dry_run = True
    result = patch_containers(run)
    assert result.status is Status.PLANNED
    assert any("cannot plan it" in c and NOVA in c for c in result.changes)


def test_dry_run_with_gerrit_unreachable_asks_once_and_says_what_a_run_would_fetch(tmp_path, gerrit, upstream):
    from conftest import free_port

    silent = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    run = make_run(tmp_path, silent, upstream.address,
                   overcloud=[("openstack/nova", NOVA), ("openstack/puppet-tripleo", PUPPET)],
                   undercloud=[("openstack/tripleo-common", UNDER)])
    run.dry_run = True
    result = patch_containers(run)
    assert result.status is Status.PLANNED
    assert result.changes[:2] == [
        "Gerrit unreachable: Connection refused",
        "a real run would fetch 3 change(s): nova, puppet-tripleo, tripleo-common"]
    assert not any("cannot plan it" in c for c in result.changes), result.changes
    assert not (tmp_path / "work").exists()
    run.dry_run = False
    with pytest.raises(GerritError, match=f"cannot reach Gerrit at {silent}: Connection refused"):
        patch_containers(run)


def test_unknown_change_fails_naming_change_project_and_branch(tmp_path, gerrit, upstream):
    missing = "I" + "e" * 40
    run = make_run(tmp_path, gerrit.url, upstream.address, overcloud=[("openstack/nova", missing)])
    with pytest.raises(GerritError, match=f"change {missing} \\(project openstack/nova, branch master\\)"):
        patch_containers(run)
    assert run.state.load(TARGET) is None


ESCAPES = {
    "dotdot-in-new-name": (NOVA_PATCH.replace("+++ b/nova/api.py", "+++ b/../../../etc/cron.d/evil"),
                           "path 'b/../../../etc/cron.d/evil' climbs out with .."),
    "absolute-old-name": (NOVA_PATCH.replace("--- a/nova/api.py", "--- /etc/shadow"), "path '/etc/shadow' is absolute"),
    "dotdot-in-git-header": (NOVA_PATCH.replace("diff --git a/nova/api.py b/nova/api.py",
                                                "diff --git a/nova/api.py b/nova/../../x.py"),
                             "path 'nova/../../x.py' climbs out with .."),
}


@pytest.mark.parametrize("patch, expected", ESCAPES.values(), ids=ESCAPES.keys())
def test_a_gerrit_patch_escaping_its_folder_is_refused_by_apex(tmp_path, upstream, patch, expected):
    with run_fake_gerrit() as fake:
        fake.add(FakeChange("openstack/nova", "master", NOVA, patch))
        run = make_run(tmp_path, fake.url, upstream.address, overcloud=[("openstack/nova", NOVA)])
        with pytest.raises(PatchError) as err:
            patch_containers(run)
    assert f"patch openstack/nova {NOVA} (revision " in err.value.message and expected in err.value.message
    assert not (tmp_path / "work" / "containers").exists() and run.state.load(TARGET) is None


@pytest.mark.parametrize(
    "odl_version, rebuilt",
    [("oxygen", True), ("master", False)],
    ids=["other-release-rebuilds", "shipped-release-keeps-image"],
)
def test_opendaylight_image_is_rebuilt_for_another_release(tmp_path, gerrit, upstream, odl_version, rebuilt):
    run = make_run(tmp_path, gerrit.url, upstream.address,
                   deploy_options={"sdn_controller": "opendaylight", "odl_version": odl_version, "os_version": "stein"},
                   patching__odl_repo_url="http://127.0.0.1:1/odl/{release}/")
    patch_containers(run)
    folder = tmp_path / "work" / "containers" / "opendaylight"
    assert folder.is_dir() is rebuilt
    if rebuilt:
        assert "baseurl=http://127.0.0.1:1/odl/oxygen/" in (folder / "opendaylight.repo").read_text()
        dockerfile = (folder / "Dockerfile").read_text()
        assert "yum -y remove opendaylight && yum -y install opendaylight" in dockerfile
        assert 'io.opnfv.apex.opendaylight="oxygen"' in dockerfile
        check_golden("Dockerfile.opendaylight", dockerfile.replace(upstream.address, "REGISTRY"))
        assert run.state.load(TARGET).data["rebuild"]["opendaylight"]["opendaylight"] == "oxygen"


def test_images_no_longer_patched_are_removed(tmp_path, gerrit, upstream):
    run = make_run(tmp_path, gerrit.url, upstream.address, overcloud=[("openstack/nova", NOVA)])
    patch_containers(run)
    assert (tmp_path / "work" / "containers" / "nova-api").is_dir()
    run = make_run(tmp_path, gerrit.url, upstream.address)
    result = patch_containers(run)
    assert not (tmp_path / "work" / "containers" / "nova-api").exists()
    assert any(c.startswith("removed stale") for c in result.changes)
    assert [m.name for m in read_archive(tmp_path / "work" / ARCHIVE)] == ["containers"]
    assert json.loads((tmp_path / "work" / "image_patches" / "overcloud" / "manifest.json").read_text()) == []


def test_local_patch_files_are_sorted_like_gerrit_ones(tmp_path, gerrit, upstream):
    (tmp_path / "fixes").mkdir()
    (tmp_path / "fixes" / "hello new.patch").write_text(NOVA_PATCH)
    listing = write_yaml(tmp_path / "local.yaml", {"overcloud": [{"path": "fixes/hello new.patch",
                                                                  "project": "openstack/nova"}]})
    run = make_run(tmp_path, gerrit.url, upstream.address, patching__local_patches=str(listing))
    patch_containers(run)
    api = tmp_path / "work" / "containers" / "nova-api"
    assert (api / "01-hello-new.patch").is_file()
    assert 'io.opnfv.apex.patch.01="openstack/nova hello new.patch"' in (api / "Dockerfile").read_text()
    # A local file is named by its path (no patch set, no commit), in the record push-registry reads.
    [patch] = run.state.load(TARGET).data["rebuild"]["nova-api"]["patches"]
    assert patch["change_id"] == str(tmp_path / "fixes" / "hello new.patch") and "patch_set" not in patch


# -- real builds -------------------------------------------------------------------------------

BAD_PATCH = git_patch(NOVA, {"nova/api.py": ('def hello():\n    return "older"\n', 'def hello():\n    return "new"\n')})


def build_context(tmp_path: Path, registry: str, patch: str) -> Path:
    with run_fake_gerrit() as fake:
        fake.add(FakeChange("openstack/nova", "master", NOVA, patch))
        run = make_run(tmp_path, fake.url, registry, overcloud=[("openstack/nova", NOVA)],
                       upstream__namespace="buildtest")
        patch_containers(run)
    assert run.state.load(TARGET).data["rebuild"]["nova-api"]["user"] == "nova"
    return tmp_path / "work" / "containers" / "nova-api"


def test_docker_build_applies_the_patch_and_restores_the_user(tmp_path, upstream, docker_client):
    import docker

    context = build_context(tmp_path, upstream.address, NOVA_PATCH)
    tag = f"apex-test/patched-nova-api:{tmp_path.name.lower()}"
    image, _ = docker_client.images.build(path=str(context), tag=tag, network_mode="host", rm=True, pull=True)
    try:
        assert image.attrs["Config"]["User"] == "nova"
        labels = image.labels
        assert labels["io.opnfv.apex.patch.01"].startswith(f"openstack/nova {NOVA}@")
        assert labels["io.opnfv.apex.base"] == f"{upstream.address}/buildtest/centos-binary-nova-api:current-tripleo"
        out = docker_client.containers.run(tag, ["python3", "-c", "import nova.api; print(nova.api.hello())"],
                                           remove=True, network_mode="host")
        assert out.decode().strip() == "new"
        leftovers = docker_client.containers.run(tag, ["sh", "-c", f"ls /tmp; ls {SITE}/nova"], remove=True,
                                                 network_mode="host").decode().split()
        assert sorted(leftovers) == ["__init__.py", "api.py"], "no patch files, backups or rejects left behind"
    finally:
        docker_client.images.remove(tag, force=True)

    bad = build_context(tmp_path / "bad", upstream.address, BAD_PATCH)
    with pytest.raises(docker.errors.BuildError) as err:
        docker_client.images.build(path=str(bad), tag=tag + "-bad", network_mode="host", rm=True)
    assert "FAILED" in str(err.value) or "returned a non-zero code" in str(err.value)


def run_buildah(argv: list[str], **kwargs):
    """buildah with its own /dev/null: it leaves an inherited stdin non-blocking, which ansible refuses later."""
    return subprocess.run(argv, stdin=subprocess.DEVNULL, **kwargs)


def test_buildah_bud_applies_the_patch(tmp_path, upstream):
    need(shutil.which("buildah") is not None, "buildah (Debian package buildah)")
    context = build_context(tmp_path, upstream.address, NOVA_PATCH)
    tag = f"localhost/apex-test/buildah-nova-api:{tmp_path.name.lower()}"
    common = ["--storage-driver", "vfs"]
    bud = run_buildah(["buildah", *common, "bud", "--isolation", "chroot", "--network", "host",
                          "--tls-verify=false", "-t", tag, str(context)], capture_output=True, text=True)
    assert bud.returncode == 0, bud.stderr[-2000:]
    try:
        inspect = json.loads(run_buildah(["buildah", *common, "inspect", "--type", "image", tag],
                                            capture_output=True, text=True, check=True).stdout)
        assert inspect["OCIv1"]["config"]["User"] == "nova"
        assert inspect["OCIv1"]["config"]["Labels"]["io.opnfv.apex.patch.01"].startswith("openstack/nova")
        ctr = run_buildah(["buildah", *common, "from", tag], capture_output=True, text=True, check=True).stdout.strip()
        try:
            # Read as root: chroot isolation cannot exec as the image's user on this host.
            out = run_buildah(["buildah", *common, "run", "--isolation", "chroot", "--user", "root", ctr, "--", "cat",
                                  f"{SITE}/nova/api.py"], capture_output=True, text=True, check=True).stdout
            assert 'return "new"' in out
        finally:
            run_buildah(["buildah", *common, "rm", ctr], capture_output=True)
    finally:
        run_buildah(["buildah", *common, "rmi", "-f", tag], capture_output=True)

    bad = build_context(tmp_path / "bad", upstream.address, BAD_PATCH)
    failed = run_buildah(["buildah", *common, "bud", "--isolation", "chroot", "--network", "host",
                             "--tls-verify=false", "-t", tag + "-bad", str(bad)], capture_output=True, text=True)
    # buildah keeps pulled bases in its own storage: drop them, the registry port changes per run.
    run_buildah(["buildah", *common, "rmi", "-f", f"{upstream.address}/buildtest/centos-binary-nova-api:current-tripleo"],
                   capture_output=True)
    assert failed.returncode != 0
    assert "FAILED" in failed.stdout + failed.stderr or "Hunk #1" in failed.stdout + failed.stderr


# -- through the real Invoke task ---------------------------------------------------------------

def test_the_apex_task_writes_outputs_and_reruns_up_to_date(tmp_path, gerrit, upstream):
    run = make_run(tmp_path, gerrit.url, upstream.address, overcloud=[("openstack/nova", NOVA)])
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
           "APEX_DEPLOY_SETTINGS": run.options.deploy_settings, "APEX_PATCHES_FILE": run.options.patches_file,
           "APEX_WORK_DIR": str(tmp_path / "work"), "APEX_GERRIT_URL": gerrit.url,
           "APEX_UPSTREAM_REGISTRY": upstream.address, "APEX_UPSTREAM_INSECURE": "1",
           "APEX_REGISTRY_ADDRESS": upstream.address, "APEX_PATCHING_PYTHON_PATH": SITE}
    cmd = [sys.executable, "-m", "apex_tools", "patch-containers", "--json"]
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert first.returncode == 0, first.stderr
    (row,) = json.loads(first.stdout)
    assert row["status"] == "changed"
    assert (tmp_path / "work" / "containers" / "nova-api" / "Dockerfile").is_file()
    second = subprocess.run(cmd + ["--no-fetch"], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)[0]["changes"] == ["up to date"]


# -- reading upstream image configs --------------------------------------------------------------

def test_inspect_image_reads_created_and_user_through_lists_and_reports_missing(upstream):
    from apex_tools.registry.image_config import inspect_image
    from apex_tools.core.reference import ImageRef
    from apex_tools.registry.client import Manifest, RegistryClient, sha256_digest

    client = RegistryClient(upstream.address, tls="http")
    repo = "tripleomaster/centos-binary-nova-api"
    single = client.get_manifest(repo, "current-tripleo")
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
        {"mediaType": single.media_type, "digest": single.digest, "size": len(single.raw),
         "platform": {"architecture": "amd64", "os": "linux"}}]}).encode()
    client.put_manifest(repo, "multi", Manifest("application/vnd.oci.image.index.v1+json", sha256_digest(index), index))
    base = ImageRef.parse(f"{upstream.address}/{repo}:current-tripleo")
    direct, listed = inspect_image(client, base), inspect_image(client, base.with_tag("multi"))
    assert direct == listed and direct.user == "1000"
    assert direct.created is not None and direct.created.tzinfo is not None
    assert inspect_image(client, base.with_tag("no-such-tag")) is None
    assert inspect_image(client, ImageRef.parse(f"{upstream.address}/tripleomaster/centos-binary-nova-libvirt:x")) is None
    # A config read once is known by its digest: its blob is not asked for again.
    configs: dict = {}
    assert inspect_image(client, base, configs) == direct
    config = single.json()["config"]["digest"]
    assert list(configs) == [config] and configs[config]["user"] == "1000"
    configs[config] = {"created": None, "user": "from-the-cache"}
    assert inspect_image(client, base, configs).user == "from-the-cache"


@pytest.mark.parametrize(
    "submitted, in_manifest",
    [("2018-06-11 15:23:55.000000000", False), ("2099-01-01 00:00:00.000000000", True)],
    ids=["merged-before-disk-image-skipped", "merged-after-disk-image-kept"],
)
def test_merged_disk_image_patch_is_compared_with_the_upstream_image_age(tmp_path, upstream, httpserver, submitted,
                                                                          in_manifest):
    httpserver.expect_request("/master/overcloud-full.tar", method="HEAD").respond_with_data(
        "", headers={"Last-Modified": "Wed, 20 Nov 2019 10:00:00 GMT"})
    with run_fake_gerrit() as fake:
        fake.add(FakeChange("openstack/puppet-tripleo", "master", PUPPET, PUPPET_PATCH, status="MERGED",
                            submitted=submitted))
        run = make_run(tmp_path, fake.url, upstream.address, overcloud=[("openstack/puppet-tripleo", PUPPET)],
                       upstream__images_url=httpserver.url_for("/{os_version}/"))
        patch_containers(run)
    manifest = json.loads((tmp_path / "work" / "image_patches" / "overcloud" / "manifest.json").read_text())
    assert bool(manifest) is in_manifest
    skipped = run.state.load(TARGET).data["skipped"]
    assert bool(skipped) is not in_manifest
    if skipped:
        assert "already in the upstream overcloud image" in skipped[0]["reason"]


def test_outputs_read_by_ceph_loop_and_push_registry(tmp_path, gerrit, upstream):
    """The contracts: ceph-loop's manifest loader and push-registry's rebuild finder accept our outputs."""
    from apex_tools.patching.image_patches import digests, load_manifest
    from apex_tools.registry.rebuild import find_rebuilds

    run = make_run(tmp_path, gerrit.url, upstream.address,
                   overcloud=[("openstack/nova", NOVA), ("openstack/puppet-tripleo", PUPPET)])
    patch_containers(run)
    work = tmp_path / "work"
    (disk,) = load_manifest(work / "image_patches" / "overcloud")
    assert (disk.change_id, disk.target_dir, disk.strip) == (PUPPET, "/etc/puppet/modules/tripleo", 1)
    # The disk-image patch's identity, as ceph-loop writes it into provenance.json's disk_images.
    puppet = next(c for c in gerrit.changes.values() if c.change_id == PUPPET)
    (entry,) = digests(work / "image_patches" / "overcloud", [disk])
    assert {k: entry[k] for k in ("project", "change_id", "patch_set", "revision", "commit")} == {
        "project": "openstack/puppet-tripleo", "change_id": PUPPET, "patch_set": 4, "revision": puppet.revision,
        "commit": puppet.revision}
    assert len(entry["sha256"]) == 64
    assert load_manifest(work / "image_patches" / "undercloud") == []
    planned = run.state.load(TARGET).data["rebuild"]
    rebuilds = find_rebuilds(work / "containers", upstream.address, planned)
    assert [r.image for r in rebuilds] == UPSTREAM_NOVA
    assert {str(r.base) for r in rebuilds} == {planned[r.image]["from"] for r in rebuilds}


@pytest.mark.parametrize("identity, expected", [({"patch_set": 0}, "entry 0: patch_set"),
                                                ({"patch_set": "two"}, "entry 0: patch_set"),
                                                ({"commit": "../x"}, "entry 0: commit")])
def test_a_disk_image_manifest_with_a_bad_patch_set_or_commit_is_refused(tmp_path, identity, expected):
    from apex_tools.core.errors import ImageError
    from apex_tools.patching.image_patches import load_manifest

    (tmp_path / "01-x.patch").write_text(PUPPET_PATCH)
    (tmp_path / "manifest.json").write_text(json.dumps([{
        "project": "openstack/puppet-tripleo", "change_id": PUPPET, "revision": "a" * 40, "file": "01-x.patch",
        "target_dir": "/etc/puppet/modules/tripleo", **identity}]))
    with pytest.raises(ImageError, match=expected):
        load_manifest(tmp_path)
