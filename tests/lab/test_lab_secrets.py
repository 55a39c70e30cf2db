"""Secrets set for a whole lab run (registry and upstream passwords, the IPMI password) appear
nowhere they should not: not on the console (table or --json), not in `apex config`, the log,
the run records, nor any work-dir file — except instackenv.json, which must carry the IPMI
password and is 0600. Records hold no plain digest of that file either. One lab run."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from apex_tools.core.resources import data_path
from conftest import need
from lab_support import apex, run_chain, running_lab
from registry_support import forget_images

SECRETS = {
    "APEX_REGISTRY_PASSWORD": "reg-Pa55-7f3a9c",
    "APEX_UPSTREAM_PASSWORD": "up-Pa55-41be02",
}
IPMI_PASS = "ipmi-Pa55-90d1e7"
LAB_TOOLS = ("nginx", "docker-registry", "mkfs.xfs", "qemu-img", "busybox", "patch", "virt-customize")


def _files(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            yield path


def _holds(path: Path, needles: list[bytes]) -> list[bytes]:
    """The needles found in ``path`` (read in overlapping chunks: some work-dir files are images)."""
    found: set[bytes] = set()
    overlap = max(len(n) for n in needles)
    tail = b""
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 22):
            window = tail + chunk
            found.update(n for n in needles if n in window)
            tail = window[-overlap:]
    return sorted(found)


def test_a_lab_run_with_secrets_set_shows_and_records_none_of_them(tmp_path: Path, docker_client: Any) -> None:
    missing = [t for t in LAB_TOOLS if shutil.which(t) is None and not Path("/usr/sbin", t).exists()]
    need(not missing, f"the lab's tools ({', '.join(missing)})")
    inventory = yaml.safe_load(data_path("config", "inventory", "lab.yaml").read_text())
    for node in inventory["nodes"].values():
        node["ipmi_pass"] = IPMI_PASS
    (tmp_path / "inventory.yaml").write_text(yaml.safe_dump(inventory))
    with running_lab(tmp_path / "lab") as env:
        env.update(SECRETS, APEX_REGISTRY_USERNAME="apex", APEX_UPSTREAM_USERNAME="apex",
                   APEX_INVENTORY_FILE=str(tmp_path / "inventory.yaml"))
        try:
            rows = run_chain(env, tmp_path)
            table = apex(["-f", str(data_path("config", "lab.yaml")), "deploy", "--verbose"], env, tmp_path)
            shown = apex(["-f", str(data_path("config", "lab.yaml")), "config"], env, tmp_path)
        finally:
            forget_images(docker_client, [env["APEX_REGISTRY_ADDRESS"], env["APEX_UPSTREAM_REGISTRY"]])
    assert all(row["status"] != "failed" for row in rows.values()), rows
    work = Path(env["APEX_WORK_DIR"])
    instackenv = work / "instackenv.json"
    needles = [s.encode() for s in [*SECRETS.values(), IPMI_PASS]]
    # The file that must hold the IPMI password: private, and its plain sha256 recorded nowhere.
    assert IPMI_PASS.encode() in instackenv.read_bytes()
    assert instackenv.stat().st_mode & 0o777 == 0o600
    needles.append(hashlib.sha256(instackenv.read_bytes()).hexdigest().encode())

    for name, out in (("run (--json)", str(rows)), ("deploy (table, --verbose)", table.stdout + table.stderr),
                      ("apex config", shown.stdout + shown.stderr)):
        assert not [n for n in needles if n.decode() in out], f"{name} shows a secret"
    assert "registry.password" in shown.stdout and "********" in shown.stdout
    # The parameter file hands the nodes the local registry's credentials
    # (ContainerImageRegistryCredentials): it holds that password alone, and is private.
    parameters = work / "docker-images.yaml"
    assert _holds(parameters, needles) == [SECRETS["APEX_REGISTRY_PASSWORD"].encode()]
    assert parameters.stat().st_mode & 0o777 == 0o600
    needles.append(hashlib.sha256(parameters.read_bytes()).hexdigest().encode())
    leaks = {str(p.relative_to(work)): _holds(p, needles) for p in _files(work) if p not in (instackenv, parameters)}
    leaks = {name: found for name, found in leaks.items() if found}
    assert leaks == {}, f"work-dir files holding a secret or the instackenv digest: {leaks}"
    assert (work / "apex.log").stat().st_size > 0 and (work / "state").is_dir()
    assert os.listdir(work / "state"), "the records were written (and searched)"
