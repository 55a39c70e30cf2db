"""ceph-loop against a real small qcow2 (XFS, no partition table, like RDO's) and real libguestfs.

Appliance launches are counted through PATH wrappers around virt-customize and guestfish;
the suite launches six: one to build the test image (cached across sessions by recipe), and
per scenario one to customize and one to read the result back.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from apex_tools.patching import image_patches
from apex_tools.diskimage import storage_env
from apex_tools.targets.ceph_loop import IMAGE_NAME, STORAGE_ENV, UNIT_NAME, LoopDevice, ceph_loop
from apex_tools.core.config import CephOptions, Layer, resolve
from apex_tools.diskimage.customize import ChecksumCache, Customization
from apex_tools.core.errors import ImageError, StateError
from apex_tools.core.run import RunContext, Status

from conftest import REPO, need

OS_VERSION = "master"
PUPPET_FILE = "/etc/puppet/modules/tripleo/manifests/profile/ceph.pp"
PUPPET_TEXT = "class tripleo::profile::ceph {\n  $osd_count = 1\n  include ::ceph\n}\n"
GOOD_PATCH = """\
--- a/manifests/profile/ceph.pp
+++ b/manifests/profile/ceph.pp
@@ -1,4 +1,4 @@
 class tripleo::profile::ceph {
-  $osd_count = 1
+  $osd_count = 3
   include ::ceph
 }
"""
BAD_PATCH = GOOD_PATCH.replace("include ::ceph", "include ::ceph::profile")
CHANGE = "I" + "a" * 40
REGISTRY = "192.0.2.1:8787"
# What the test image holds; its hash (with the binaries') names the cached image.
LIBS = ("/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2")
RECIPE = f"""\
run
mkfs xfs /dev/sda
mount /dev/sda /
mkdir-p /bin
mkdir-p /usr/bin
mkdir-p /lib/x86_64-linux-gnu
mkdir-p /lib64
mkdir-p /tmp
mkdir-p /dev
mkdir-p /proc
mkdir-p /sys
mkdir-p /etc/systemd/system
mkdir-p {os.path.dirname(PUPPET_FILE)}
upload /bin/busybox /bin/busybox
chmod 0755 /bin/busybox
ln /bin/busybox /bin/sh
upload /usr/bin/patch /usr/bin/patch
chmod 0755 /usr/bin/patch
upload {LIBS[0]} {LIBS[0]}
upload {LIBS[1]} {LIBS[1]}
chmod 0755 {LIBS[1]}
write /etc/fstab "/dev/sda / xfs defaults 0 0\\n"
write /etc/hosts "127.0.0.1 localhost\\n"
write /etc/os-release "NAME=apex-test\\nID=apex-test\\n"
write {PUPPET_FILE} "{PUPPET_TEXT.replace(chr(10), chr(92) + 'n')}"
sh "/bin/busybox --install -s /bin"
rm /bin/patch
"""
LAUNCHERS = ("virt-customize", "guestfish")


def _have_tools() -> bool:
    return all(shutil.which(t) for t in (*LAUNCHERS, "qemu-img", "busybox", "patch")) and Path("/bin/busybox").is_file()


def _guestfish(*args: str, script: str = "") -> str:
    done = subprocess.run(["guestfish", *args], input=script, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise AssertionError(f"guestfish failed:\n{done.stderr}")
    return done.stdout


@pytest.fixture(scope="session")
def base_qcow2() -> Path:
    """The test overcloud image, built once and cached by recipe (one appliance launch)."""
    need(_have_tools(), "libguestfs-tools, qemu-utils, busybox-static and patch")
    os.environ.setdefault("LIBGUESTFS_BACKEND", "direct")
    os.environ.setdefault("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")
    return cached_base_image()


def cached_base_image() -> Path:
    """Build the test image unless a cached one of the same recipe and binaries exists."""
    key = hashlib.sha256(RECIPE.encode())
    for binary in ("/bin/busybox", "/usr/bin/patch", *LIBS):
        key.update(Path(binary).read_bytes())
    cache = Path(os.environ.get("APEX_TEST_CACHE", "/var/tmp/apex-tools-tests"))
    image = cache / f"ceph-loop-{key.hexdigest()[:16]}.qcow2"
    if not image.exists():
        cache.mkdir(parents=True, exist_ok=True)
        partial = image.with_suffix(".partial")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(partial), "512M"], check=True)
        _guestfish("-a", str(partial), script=RECIPE)
        partial.rename(image)
    return image


@dataclass
class Launches:
    """Counts appliance launches by wrapping the libguestfs tools on PATH."""

    log: Path

    def count(self) -> int:
        return len(self.log.read_text().splitlines()) if self.log.exists() else 0


@pytest.fixture(scope="module")
def launches(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launches]:
    folder = tmp_path_factory.mktemp("wrappers")
    log = folder / "launches.log"
    for tool in LAUNCHERS:
        wrapper = folder / tool
        wrapper.write_text(f'#!/bin/sh\necho {tool} >> {log}\nexec {shutil.which(tool)} "$@"\n')
        wrapper.chmod(0o755)
    old = os.environ["PATH"]
    os.environ["PATH"] = f"{folder}:{old}"
    yield Launches(log)
    os.environ["PATH"] = old


def make_workspace(root: Path, base: Path, *, ceph: bool = True, device: str | None = None,
                   patch: str | None = None, signing: bool = False) -> dict[str, object]:
    """An image cache holding ``base``, a deploy settings file and (optionally) one image patch;
    signing off unless asked (its policy would make every run customize the image)."""
    cache = root / "images" / OS_VERSION
    cache.mkdir(parents=True)
    shutil.copyfile(base, cache / IMAGE_NAME)
    work = root / "work"
    options = {"ceph": ceph, "os_version": OS_VERSION, **({"ceph_device": device} if device else {})}
    settings = root / "deploy.yaml"
    settings.write_text(yaml.safe_dump({"global_params": {"ha_enabled": False}, "deploy_options": options}))
    if patch is not None:
        folder = work / "image_patches" / "overcloud"
        folder.mkdir(parents=True)
        (folder / "01-ceph.patch").write_text(patch)
        (folder / "manifest.json").write_text(json.dumps([{
            "project": "openstack/puppet-tripleo", "change_id": CHANGE, "revision": "abc123", "patch_set": 6,
            "commit": "c" * 40, "file": "01-ceph.patch", "target_dir": "/etc/puppet/modules/tripleo", "strip": 1,
        }]))
    return {"work_dir": str(work), "image_dir": str(root / "images"), "deploy_settings": str(settings),
            "signing": {"enabled": signing}, "registry": {"address": REGISTRY}}


def context(values: dict[str, object], **kw: object) -> RunContext:
    return RunContext(resolve([Layer("test", values)]).options, **kw)  # type: ignore[arg-type]


def read_back(image: Path) -> dict[str, str]:
    """Everything the tests look at inside ``image``, in one read-only appliance launch."""
    probes = {
        "unit": f"cat /etc/systemd/system/{UNIT_NAME}",
        "link": f"readlink /etc/systemd/system/multi-user.target.wants/{UNIT_NAME}",
        "puppet": f"cat {PUPPET_FILE}",
        "stage": "exists /tmp/apex-tools-stage",
        "backing": "exists /srv/data.img",
        "policy": "cat /etc/containers/policy.json",
        "registries_d": "cat /etc/containers/registries.d/apex-tools.yaml",
        "public_key": "cat /etc/pki/containers/apex-tools.pub",
    }
    script = "".join(f"echo @@{name}\n-{cmd}\n" for name, cmd in probes.items())
    out = _guestfish("--ro", "-a", str(image), "-m", "/dev/sda", script=script)
    found: dict[str, str] = {}
    for chunk in out.split("@@")[1:]:
        name, _, body = chunk.partition("\n")
        found[name] = body[:-1] if body.endswith("\n") else body  # guestfish ends every answer with one
    return found


@pytest.fixture(scope="module")
def loop_run(base_qcow2: Path, launches: Launches, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """ceph-loop on a virtual deployment with one puppet patch, run twice, then read back."""
    root = tmp_path_factory.mktemp("loop")
    values = {**make_workspace(root, base_qcow2, patch=GOOD_PATCH, signing=True), "ceph": {"virtual": True}}
    source = root / "images" / OS_VERSION / IMAGE_NAME
    source_sha = hashlib.sha256(source.read_bytes()).hexdigest()
    before = launches.count()
    first = ceph_loop(context(values))
    after_first = launches.count()
    second = ceph_loop(context(values))
    after_second = launches.count()
    work = Path(str(values["work_dir"]))
    env_before = (work / STORAGE_ENV).read_text()
    # A pool setting only touches the storage environment, never the image.
    third = ceph_loop(context({**values, "ceph": {"virtual": True, "pool_size": 3}}))
    return {
        "first": first, "second": second, "third": third, "root": root, "work": work,
        "env_before": env_before, "launches_third": launches.count() - after_second,
        "launches_first": after_first - before, "launches_second": after_second - after_first,
        "source_unchanged": hashlib.sha256(source.read_bytes()).hexdigest() == source_sha,
        "inside": read_back(work / IMAGE_NAME),
    }


@pytest.mark.slow
def test_unit_attaches_the_sparse_file_at_every_boot(loop_run: dict) -> None:
    unit = loop_run["inside"]["unit"]
    assert "Type=oneshot" in unit and "RemainAfterExit=yes" in unit
    assert "ExecStart=/usr/sbin/losetup /dev/loop3 /srv/data.img" in unit
    assert "ExecStop=/usr/sbin/losetup -d /dev/loop3" in unit
    assert "truncate -s 10G /srv/data.img" in unit  # virtual deployment size
    assert "WantedBy=multi-user.target" in unit
    assert "Before=docker.service podman.service" in unit


@pytest.mark.slow
def test_unit_is_enabled_and_backing_file_left_to_first_boot(loop_run: dict) -> None:
    inside = loop_run["inside"]
    assert inside["link"].strip() == f"/etc/systemd/system/{UNIT_NAME}"
    assert inside["backing"].strip() == "false"  # no blocks in the image: the unit creates it sparse
    assert inside["stage"].strip() == "false"  # the staged patches were removed from the image


@pytest.mark.slow
def test_image_requires_the_deployments_signatures_on_its_registry(loop_run: dict) -> None:
    inside, work = loop_run["inside"], loop_run["work"]
    policy = json.loads(inside["policy"])
    assert policy["transports"]["docker"][REGISTRY] == [{
        "type": "sigstoreSigned", "keyPath": "/etc/pki/containers/apex-tools.pub",
        "signedIdentity": {"type": "matchRepoDigestOrExact"}}]
    assert policy["default"] == [{"type": "insecureAcceptAnything"}]  # other registries as they were
    assert yaml.safe_load(inside["registries_d"]) == {"docker": {REGISTRY: {"use-sigstore-attachments": True}}}
    assert inside["public_key"].strip() == (work / "signing" / "signing.pub").read_text().strip()
    assert "PRIVATE" not in inside["public_key"]
    # The work dir's copy, for skopeo on this host, points at the key beside it.
    local = json.loads((work / "policy.json").read_text())["transports"]["docker"][REGISTRY][0]
    assert local["keyPath"] == str(work / "signing" / "signing.pub")
    disk = json.loads((work / "provenance.json").read_text())["disk_images"]["overcloud"]
    assert disk["customized"]["sha256"] == hashlib.sha256((work / IMAGE_NAME).read_bytes()).hexdigest()
    assert [p["change_id"] for p in disk["patches"]] == [CHANGE] and len(disk["patches"][0]["sha256"]) == 64
    assert (disk["patches"][0]["patch_set"], disk["patches"][0]["commit"]) == (6, "c" * 40)  # Gerrit's identity
    assert "/etc/containers/policy.json" in disk["trust_files"]


@pytest.mark.slow
def test_puppet_patch_applied_inside_the_image(loop_run: dict) -> None:
    assert loop_run["inside"]["puppet"] == PUPPET_TEXT.replace("$osd_count = 1", "$osd_count = 3")


@pytest.mark.slow
def test_one_launch_then_up_to_date_without_launch(loop_run: dict) -> None:
    assert loop_run["first"].status is Status.CHANGED
    assert loop_run["launches_first"] == 1
    assert loop_run["second"].status is Status.UP_TO_DATE
    assert loop_run["second"].changes == ["up to date"]
    assert loop_run["launches_second"] == 0
    assert loop_run["source_unchanged"]


@pytest.mark.slow
def test_storage_settings_change_rewrites_the_env_without_a_launch(loop_run: dict) -> None:
    third = loop_run["third"]
    assert third.status is Status.CHANGED and loop_run["launches_third"] == 0
    assert {i.name: i.status for i in third.items} == {IMAGE_NAME: "up to date", STORAGE_ENV: "written"}
    params = yaml.safe_load((loop_run["work"] / STORAGE_ENV).read_text())["parameter_defaults"]
    before = yaml.safe_load(loop_run["env_before"])["parameter_defaults"]
    assert params["CephPoolDefaultSize"] == 3 and before["CephPoolDefaultSize"] == 2
    assert params["CephClusterFSID"] == before["CephClusterFSID"]  # same cluster identity


@pytest.mark.slow
def test_storage_environment_points_at_the_loop_device(loop_run: dict) -> None:
    env_file = loop_run["work"] / STORAGE_ENV
    params = yaml.safe_load(loop_run["env_before"])["parameter_defaults"]
    assert params["CephAnsibleDisksConfig"] == {"devices": ["/dev/loop3"], "osd_scenario": "collocated", "journal_size": 512}
    assert params["CephAnsibleExtraConfig"]["ceph_osd_docker_memory_limit"] == "1g"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    leftovers = [p.name for p in loop_run["work"].iterdir() if p.name.startswith(".ceph-loop")]
    assert leftovers == []


@pytest.mark.slow
def test_patch_that_does_not_apply_fails_naming_the_change(base_qcow2: Path, launches: Launches, tmp_path: Path) -> None:
    values = make_workspace(tmp_path, base_qcow2, patch=BAD_PATCH)
    with pytest.raises(ImageError) as caught:
        ceph_loop(context(values))
    message = str(caught.value)
    assert CHANGE in message and "openstack/puppet-tripleo" in message and "abc123, patch set 6" in message
    assert "FAILED" in message  # patch's own output: "Hunk #1 FAILED at 1."
    work = Path(str(values["work_dir"]))
    assert not (work / IMAGE_NAME).exists()
    assert [p.name for p in work.iterdir() if p.name.startswith(".ceph-loop")] == []


@pytest.mark.slow
def test_user_device_through_the_invoke_task_creates_no_unit(
    base_qcow2: Path, launches: Launches, tmp_path: Path
) -> None:
    values = make_workspace(tmp_path, base_qcow2, device="/dev/sdb", patch=GOOD_PATCH)
    env = {**os.environ, **{f"APEX_{k.upper()}": str(v) for k, v in values.items()}}
    before = launches.count()
    done = subprocess.run([sys.executable, "-m", "apex_tools", "ceph-loop"], cwd=REPO, env=env,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert launches.count() - before == 1
    work = Path(str(values["work_dir"]))
    inside = read_back(work / IMAGE_NAME)
    assert inside["unit"] == "" and inside["link"] == ""  # neither exists
    assert "$osd_count = 3" in inside["puppet"]
    params = yaml.safe_load((work / STORAGE_ENV).read_text())["parameter_defaults"]
    assert params["CephAnsibleDisksConfig"]["devices"] == ["/dev/sdb"]
    assert "CephAnsibleExtraConfig" not in params  # baremetal by default: no memory limits


# --- no appliance launch below -------------------------------------------------------------


@pytest.fixture
def small_source(tmp_path: Path) -> Path:
    """A stand-in source image for runs that never launch an appliance."""
    need(shutil.which("qemu-img") is not None, "qemu-img")
    path = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"], check=True)
    return path


def test_ceph_off_copies_the_image_and_removes_a_stale_storage_env(small_source: Path, tmp_path: Path) -> None:
    values = make_workspace(tmp_path, small_source, ceph=False)
    work = Path(str(values["work_dir"]))
    work.mkdir(parents=True)
    (work / STORAGE_ENV).write_text("stale\n")
    result = ceph_loop(context(values))
    assert result.status is Status.CHANGED
    assert (work / IMAGE_NAME).read_bytes() == small_source.read_bytes()
    assert not (work / STORAGE_ENV).exists()
    assert not (work / storage_env.SECRETS_FILE).exists()
    assert ceph_loop(context(values)).status is Status.UP_TO_DATE


def test_dry_run_plans_and_touches_nothing(small_source: Path, tmp_path: Path) -> None:
    values = make_workspace(tmp_path, small_source, patch=GOOD_PATCH)
    work = Path(str(values["work_dir"]))
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = ceph_loop(context(values, dry_run=True))
    assert result.status is Status.PLANNED
    assert any("1 disk-image patch" in line and "/dev/loop3" in line for line in result.changes)
    assert any("FSID" in line for line in result.changes)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert not (work / "state").exists()


def test_missing_source_says_to_run_fetch_images(tmp_path: Path) -> None:
    values = make_workspace(tmp_path, Path(__file__))  # any file; removed below
    (tmp_path / "images" / OS_VERSION / IMAGE_NAME).unlink()
    with pytest.raises(ImageError) as caught:
        ceph_loop(context(values))
    assert str(tmp_path / "images" / OS_VERSION / IMAGE_NAME) in caught.value.message
    assert "fetch-images" in caught.value.hint


def test_missing_patch_file_is_named(small_source: Path, tmp_path: Path) -> None:
    values = make_workspace(tmp_path, small_source, patch=GOOD_PATCH)
    (Path(str(values["work_dir"])) / "image_patches" / "overcloud" / "01-ceph.patch").unlink()
    with pytest.raises(ImageError, match="01-ceph.patch is missing"):
        ceph_loop(context(values))


def test_unit_commands_attach_a_sparse_file_on_this_host(tmp_path: Path) -> None:
    """Run the unit's own Exec lines (as systemd would, minus systemd) against a free loop device."""
    need(os.geteuid() == 0 and Path("/dev/loop-control").exists(), "root and loop devices")
    free = subprocess.run(["losetup", "-f"], capture_output=True, text=True, check=False).stdout.strip()
    need(bool(free), "a free loop device")
    backing = tmp_path / "srv" / "data.img"
    unit = LoopDevice(free, str(backing), "1G").unit()
    execs = {k: [] for k in ("ExecStartPre", "ExecStart", "ExecStop")}
    for line in unit.splitlines():
        key, _, value = line.partition("=")
        if key in execs:
            execs[key].append(shlex.split(value.lstrip("-")))
    for argv in execs["ExecStartPre"][1:] + execs["ExecStart"]:  # skip modprobe
        subprocess.run(argv, check=True)
    try:
        st = backing.stat()
        assert st.st_size == 1 << 30 and st.st_blocks * 512 < (1 << 20)  # 1 GiB, nothing allocated
        attached = subprocess.run(["losetup", "-j", str(backing)], capture_output=True, text=True).stdout
        assert attached.startswith(free + ":")
    finally:
        for argv in execs["ExecStop"]:
            subprocess.run(argv, check=False)
    # A second boot keeps the existing file (and an OSD on it) as it is.
    backing.write_bytes(b"osd")
    subprocess.run(execs["ExecStartPre"][1], check=True)
    assert backing.read_bytes() == b"osd"


# --- storage environment and secrets --------------------------------------------------------

CEPH = CephOptions(virtual=False, loop_device="/dev/loop3", loop_file="/srv/data.img",
                   loop_size_virtual="10G", loop_size_baremetal="50G", pool_size=2, pg_num=32,
                   namespace="", image="", tag="")


def test_secrets_generated_once_private_and_kept(tmp_path: Path) -> None:
    first, created = storage_env.ensure_secrets(tmp_path)
    again, created_again = storage_env.ensure_secrets(tmp_path)
    assert created and not created_again
    assert again == first
    assert stat.S_IMODE(storage_env.secrets_path(tmp_path).stat().st_mode) == 0o600
    assert len({first.fsid, *first.keys.values()}) == 4


def test_keys_use_cephs_armored_format() -> None:
    # A key printed by ceph-authtool (ceph's own cauthtool test data) and one of ours.
    assert storage_env.is_ceph_key("AQAK7yxNeF+nHBAA0SgSdbs8IkJrxroDeJ6SwQ==")
    ours = storage_env.ceph_key(created=1_700_000_000.5)
    raw = base64.b64decode(ours)
    assert len(raw) == 28 and raw[:2] == b"\x01\x00" and raw[10:12] == b"\x10\x00"
    assert int.from_bytes(raw[2:6], "little") == 1_700_000_000
    assert storage_env.is_ceph_key(ours) and ours.startswith("AQ")
    assert not storage_env.is_ceph_key("bm90IGEga2V5")


@pytest.mark.parametrize("content", ["{", '{"CephClusterFSID": "nope"}'], ids=["not-json", "bad-fsid"])
def test_damaged_secrets_fail_instead_of_changing_identity(tmp_path: Path, content: str) -> None:
    storage_env.secrets_path(tmp_path).write_text(content)
    with pytest.raises(StateError, match="ceph-secrets.json"):
        storage_env.ensure_secrets(tmp_path)
    assert storage_env.secrets_path(tmp_path).read_text() == content


@pytest.mark.parametrize(
    "virtual, limited", [(True, True), (False, False)], ids=["virtual-memory-limits", "baremetal-no-limits"]
)
def test_storage_environment_parameters(tmp_path: Path, virtual: bool, limited: bool) -> None:
    cluster, _ = storage_env.ensure_secrets(tmp_path)
    options = CEPH.model_copy(update={"virtual": virtual})
    text = storage_env.render("/dev/vdb", options, cluster)
    params = yaml.safe_load(text)["parameter_defaults"]
    assert params["CephAnsibleDisksConfig"]["devices"] == ["/dev/vdb"]
    assert params["CephPoolDefaultSize"] == 2 and params["CephPoolDefaultPgNum"] == 32
    assert params["CephClusterFSID"] == cluster.fsid and params["CephClientKey"] == cluster.keys["CephClientKey"]
    assert ("CephAnsibleExtraConfig" in params) is limited
    if limited:
        assert params["CephAnsibleExtraConfig"]["ceph_mds_docker_memory_limit"] == "1g"
    assert storage_env.render("/dev/vdb", options, cluster) == text  # same inputs, same bytes


def test_storage_env_identity_stable_across_target_runs(small_source: Path, tmp_path: Path) -> None:
    values = make_workspace(tmp_path, small_source, device="/dev/sdb")
    work = Path(str(values["work_dir"]))
    ceph_loop(context(values))
    first = (work / STORAGE_ENV).read_text()
    ceph_loop(context(values, force=True))
    assert (work / STORAGE_ENV).read_text() == first


# --- small pieces -----------------------------------------------------------------------------


def test_checksum_cache_remembers_until_the_file_changes(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"x" * 1000)
    cache = ChecksumCache(tmp_path / "sums.json")
    assert cache.cached(big) is None
    cache.remember(big, "abc", big.stat())
    assert cache.cached(big) == "abc"
    big.write_bytes(b"y" * 1001)
    assert cache.cached(big) is None


def test_customization_batches_operations_in_order(tmp_path: Path) -> None:
    ops = Customization().mkdir("/a").upload(tmp_path / "u", "/a/u").link("/a/u", "/b")
    assert ops.args == ["--mkdir", "/a", "--upload", f"{tmp_path}/u:/a/u", "--chmod", "0644:/a/u", "--link", "/a/u:/b"]
    assert not Customization()


def test_apply_script_failure_is_attributed_to_its_patch() -> None:
    patches = [image_patches.ImagePatch(project=f"p{i}", change_id=f"C{i}", file=f"{i}.patch", target_dir="/x")
               for i in range(2)]
    script = image_patches.apply_script(patches, "/tmp/stage")
    assert "apply 1 1 /x /tmp/stage/1.patch" in script
    output = "apex-patch-begin: 0\nok\napex-patch-end: 0\napex-patch-begin: 1\nHunk #1 FAILED at 3.\napex-patch-failed: 1\n"
    error = image_patches.failure(output, patches, "img")
    assert error is not None and "C1" in error.message and "Hunk #1 FAILED" in error.message
    assert image_patches.failure("all good", patches, "img") is None
