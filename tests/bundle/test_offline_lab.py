"""The disconnected flow end to end on the lab: export on the connected side, then, inside a
network namespace holding only its own loopback (``unshare -n``), import and ``deploy
--offline`` up to ``ready``, with the same ``docker-images.yaml`` as the connected run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from apex_tools.core.config import settings_path
from apex_tools.core.settings import load_deploy_settings
from apex_tools.lab.stand import lab_config_path, lab_down
from apex_tools.overcloud import command
from apex_tools.registry.deployment import APEX_TAG

from conftest import need
from lab.lab_support import NOVA_IMAGES, apex, json_documents, lab_env, lab_options

REPO = Path(__file__).resolve().parents[2]


def in_namespace(args: list[str], env: dict[str, str], code: int = 0) -> subprocess.CompletedProcess[str]:
    """``apex ARGS`` in a new network namespace with only ``lo`` (up): no route anywhere else."""
    command = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", sys.executable, "-m",
               "apex_tools", *args]
    proc = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=900,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == code, (proc.stdout + proc.stderr)[-6000:]
    return proc


def apex_digests(env: dict[str, str]) -> dict[str, str]:
    """Each rebuilt image's ``:apex`` digest as push-registry recorded it."""
    record = json.loads((Path(env["APEX_WORK_DIR"]) / "state" / "push-registry.json").read_text())
    digests = {image: entry["digest"] for image, entry in record["data"]["rebuilds"].items()}
    assert len(digests) == len(NOVA_IMAGES) and all(d.startswith("sha256:") for d in digests.values()), digests
    return digests


def test_export_then_import_and_deploy_offline_in_a_namespace_without_network(tmp_path: Path) -> None:
    need(os.geteuid() == 0 and shutil.which("unshare") is not None and shutil.which("ip") is not None,
         "root, unshare and ip (network namespaces)")
    lab = str(lab_config_path())
    online = lab_env(tmp_path / "online")
    site = {**online, "APEX_WORK_DIR": str(tmp_path / "site" / "work"),
            "APEX_IMAGE_DIR": str(tmp_path / "site" / "images")}
    tar = tmp_path / "carry" / "lab-bundle.tar"
    tar.parent.mkdir()
    try:
        # The connected side: what a deployment makes of the upstreams (no ceph-loop, no deploy
        # needed), then the bundle, streamed into one tar; a second export writes nothing.
        apex(["-f", lab, "lab", "up", "--quiet", "patch-containers", "push-registry",
              "bundle", "export", "--tar", str(tar)], online, REPO)
        again = apex(["-f", lab, "bundle", "export", "--tar", str(tar), "--json"], online, REPO)
        rows = {r["target"]: r for r in json_documents(again.stdout)[0]}
        assert rows["bundle-export"]["status"] == "up to date", rows
    finally:
        lab_down(lab_options(online))  # nothing of the connected side answers any more

    # Before the import, offline targets name what is missing at once (never wait on a host).
    try:
        started = time.monotonic()
        fetch = in_namespace(["-f", lab, "fetch-images", "--offline"], site, code=1)
        assert "overcloud-full.tar is not cached" in fetch.stdout + fetch.stderr
        push = in_namespace(["-f", lab, "push-registry", "--offline"], site, code=1)
        assert "images are not in the local registry" in push.stdout + push.stderr
        assert "centos-binary-nova-api:current-tripleo" in push.stdout + push.stderr
        assert time.monotonic() - started < 60
    finally:
        lab_down(lab_options(site))

    try:
        out = in_namespace(["-f", lab, "bundle", "import", "--tar", str(tar), "--json",
                            "deploy", "--offline", "--json"], site)
    finally:
        lab_down(lab_options(site))  # the registry the import started in the namespace (by its pid)
    docs = json_documents(out.stdout)
    imported = docs[0][0]
    assert imported["status"] == "changed", imported
    # The registry is the one the import started: blobs went straight into its storage.
    assert any("written straight into the registry's storage" in c for c in imported["changes"]), imported
    rows = {r["target"]: r for r in docs[1]}
    assert rows["deploy"]["status"] == "ready", rows
    assert rows["fetch-images"]["status"] == "changed"  # unpacked from the imported, recorded tarballs
    # The patched images were rebuilt in the namespace by the native builder (no engine, no
    # network), to the very digests the connected side made.
    items = rows["push-registry"]["items"]
    rebuilt = sorted(i["name"].rsplit("/", 1)[1] for i in items if i["status"] == "rebuilt")
    assert rebuilt == sorted(f"centos-binary-{n}" for n in NOVA_IMAGES), items
    assert all("(native)" in i["detail"] for i in items if i["status"] == "rebuilt"), items
    assert apex_digests(site) == apex_digests(online)
    os_version = load_deploy_settings(settings_path(lab_options(site).deploy_settings, "deploy")).os_version
    online_work, site_work = Path(online["APEX_WORK_DIR"]), Path(site["APEX_WORK_DIR"])
    assert (site_work / "docker-images.yaml").read_bytes() == (online_work / "docker-images.yaml").read_bytes()
    assert f":{APEX_TAG}" in (site_work / "docker-images.yaml").read_text()
    # The client's own container prepare (which would ask quay.io) is off on every run where the
    # release's client runs one: issue 21's DISABLE_PREPARE_RELEASES, merged beside this branch.
    if os_version in getattr(command, "DISABLE_PREPARE_RELEASES", ()):
        assert "--disable-container-prepare" in (site_work / "deploy_command").read_text()
