"""The lab for real: ``apex lab up`` / ``lab down`` with pidfiles, then the lab's chain twice
end to end (every target changed, then every target up to date).

Each test runs its own lab on free loopback ports with a temp work dir (a developer's running
lab on config/lab.yaml's fixed ports is never touched), and stops it even when it fails.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from apex_tools.core.reference import ImageRef
from apex_tools.core.workdir import IPA_TAR, OVERCLOUD_TAR
from apex_tools.lab import artifacts
from apex_tools.lab.stand import lab_config_path, lab_running, mirror_paths, upstream_root
from apex_tools.registry.client import RegistryClient
from apex_tools.trust.keys import ensure_key
from apex_tools.trust.provenance import IN_TOTO_JSON, pae
from apex_tools.trust.sigstore import attachment_tag, sign_image

from conftest import need
from lab_support import CHAIN, NOVA_IMAGES, apex, json_documents, lab_env, lab_options, run_chain, running_lab
from registry_support import forget_images, layer_blob, push_image
from trust_support import UNSIGNED, accepted, skopeo_verdict, validate_slsa

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


# --- trust: signatures, policy, provenance (issue 19) ----------------------------------------


def _deployment_refs(work: Path) -> dict[str, str]:
    """Every image docker-images.yaml names → its digest as provenance.json records it."""
    params = yaml.safe_load((work / "docker-images.yaml").read_text())["parameter_defaults"]
    refs = {v for k, v in params.items() if k.startswith("Container") and isinstance(v, str)}
    images = json.loads((work / "provenance.json").read_text())["images"]
    digests = {i["local"]["ref"]: i["local"]["digest"] for i in images}
    assert refs == set(digests), refs ^ set(digests)  # every parameter's image, and nothing else
    return digests


def test_skopeo_with_the_written_policy_accepts_every_image_and_refuses_a_tampered_one(
        lab_runs: dict[str, Any]) -> None:
    work = Path(lab_runs["options"].work_dir)
    local = RegistryClient(lab_runs["env"]["APEX_REGISTRY_ADDRESS"], tls="http")
    digests = _deployment_refs(work)
    for ref, digest in sorted(digests.items()):
        repository = ImageRef.parse(ref).repository
        ok, out = accepted(work, local, ref, repository, digest)
        assert ok, f"{ref}:\n{out}"
    # An image pushed over a deployment tag: unsigned, refused by skopeo itself. Put back after.
    ref = next(r for r in digests if r.endswith("keystone:current-tripleo"))
    repository = ImageRef.parse(ref).repository
    original = local.get_manifest(repository, "current-tripleo")
    try:
        push_image(local, repository, "current-tripleo", [layer_blob("tampered", 500)])
        assert skopeo_verdict(work, ref).status == UNSIGNED
    finally:
        local.put_manifest(repository, "current-tripleo", original)
    # The same image under another name, signed by another key only: refused.
    other_key, _ = ensure_key(work.parent / "other-key")
    local.put_manifest(repository, "other", original)
    sign_image(local, ImageRef(local.host, repository, "other"), original.digest, other_key)
    ok, out = accepted(work, local, f"{local.host}/{repository}:other", repository, original.digest)
    assert not ok, out


def test_provenance_has_every_image_with_both_digests_and_the_rebuilds_statements(
        lab_runs: dict[str, Any]) -> None:
    work = Path(lab_runs["options"].work_dir)
    data = json.loads((work / "provenance.json").read_text())
    local = RegistryClient(lab_runs["env"]["APEX_REGISTRY_ADDRESS"], tls="http")
    public = (work / "signing" / "signing.pub").read_bytes()
    for image in data["images"]:
        assert image["upstream"]["digest"].startswith("sha256:") and image["local"]["digest"].startswith("sha256:")
        assert image["signature"]["tag"] == attachment_tag(image["local"]["digest"])
        if image["rebuild"] is None:
            assert image["local"]["digest"] == image["upstream"]["digest"]  # mirrored: the digest is kept
            continue
        rebuild = image["rebuild"]
        assert image["local"]["ref"].endswith(":apex") and rebuild["base"]["digest"] == image["upstream"]["digest"]
        assert rebuild["builder"] and all(len(p["sha256"]) == 64 for p in rebuild["patches"]) and rebuild["patches"]
        statement = json.loads((work / rebuild["statement"]).read_text())
        validate_slsa(statement)
        assert statement["subject"][0]["digest"]["sha256"] == image["local"]["digest"].split(":")[1]
        envelope = json.loads((work / "provenance" / f"{image['name']}.dsse.json").read_text())
        body = base64.b64decode(envelope["payload"])
        load_pem_public_key(public).verify(base64.b64decode(envelope["signatures"][0]["sig"]),
                                           pae(IN_TOTO_JSON, body))
        assert json.loads(body) == statement
        # Attached by the referrers tag scheme; :apex stays one single-platform manifest.
        repository = ImageRef.parse(image["local"]["ref"]).repository
        index = local.get_manifest(repository, attachment_tag(image["local"]["digest"], "")).json()
        assert [m["artifactType"] for m in index["manifests"]] == [IN_TOTO_JSON]
        assert not local.get_manifest(repository, "apex").is_index
    rebuilt = sorted(i["name"] for i in data["images"] if i["rebuild"])
    assert rebuilt == sorted(NOVA_IMAGES)
    disk = data["disk_images"]["overcloud"]
    assert disk["customized"]["sha256"] == _sha(work / "overcloud-full.qcow2")
    assert disk["upstream"]["checksums"]["md5"] and disk["patches"][0]["sha256"]
    if "deploy" in lab_runs["first"]:
        assert data["deploy"]["sha256"] == _sha(work / "deploy_command")


def test_second_run_signs_nothing_and_report_fits_80_columns(lab_runs: dict[str, Any]) -> None:
    assert not any("signed" in line for line in lab_runs["second"]["push-registry"]["changes"])
    assert any(line.startswith("signed ") for line in lab_runs["first"]["push-registry"]["changes"])
    env, root = lab_runs["env"], Path(lab_runs["options"].work_dir).parent
    table = apex(["report"], env, root).stdout
    assert all(len(line) <= 80 for line in table.splitlines()), table
    for image in json.loads(apex(["report", "--json"], env, root).stdout)["images"]:
        assert image["name"][:30] in table and image["local"]["digest"][:19] in table


def test_overcloud_image_carries_the_policy(lab_runs: dict[str, Any]) -> None:
    work = Path(lab_runs["options"].work_dir)
    out = subprocess.run(["guestfish", "--ro", "-a", str(work / "overcloud-full.qcow2"), "-m", "/dev/sda"],
                         input="cat /etc/containers/policy.json\ncat /etc/pki/containers/apex-tools.pub\n",
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith((work / "policy.json").read_text().replace(
        str(work / "signing" / "signing.pub"), "/etc/pki/containers/apex-tools.pub"))
    assert (work / "signing" / "signing.pub").read_text().strip() in out.stdout


def test_no_secret_outside_its_0600_file(lab_runs: dict[str, Any]) -> None:
    work = Path(lab_runs["options"].work_dir)
    key = (work / "signing" / "signing.key").read_text()
    secret = "".join(line for line in key.splitlines() if "-----" not in line)
    holders = []
    for path in work.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.stat().st_size < 64 << 20:
            if secret.encode() in path.read_bytes():
                holders.append((path.relative_to(work), oct(path.stat().st_mode & 0o777)))
    assert holders == [(Path("signing/signing.key"), "0o600")]
    password = "pw-" + hashlib.sha256(secret.encode()).hexdigest()[:16]
    shown = apex(["config"], {**lab_runs["env"], "APEX_REGISTRY_PASSWORD": password}, work.parent).stdout
    assert secret not in shown and password not in shown and "signing.key" in shown


def test_a_new_key_resigns_every_image(lab_runs: dict[str, Any], tmp_path: Path) -> None:
    env = dict(lab_runs["env"])
    work = Path(lab_runs["options"].work_dir)
    new = tmp_path / "new.key"
    new.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    new.chmod(0o600)
    env["APEX_SIGNING_KEY"] = str(new)
    rows = {r["target"]: r for r in json_documents(apex(["-f", str(lab_config_path()), "push-registry", "--json"],
                                                          env, work.parent).stdout)[0]}
    digests = _deployment_refs(work)
    assert f"signed {len(digests)} images (0 already signed)" in rows["push-registry"]["changes"]
    local = RegistryClient(env["APEX_REGISTRY_ADDRESS"], tls="http")
    ref, digest = sorted(digests.items())[0]
    ok, out = accepted(work, local, ref, ImageRef.parse(ref).repository, digest)
    assert ok, out
