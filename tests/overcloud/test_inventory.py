"""Apex inventory files: every problem named by file, key, value and what is allowed; instackenv.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from apex_tools.core.errors import SettingsError
from apex_tools.overcloud.inventory import load_inventory

from conftest import REPO

GOOD = {
    "mac_address": "52:54:00:aa:bb:01",
    "ipmi_ip": "10.4.7.2",
    "ipmi_user": "admin",
    "ipmi_pass": "secret",
    "pm_type": "ipmi",
    "cpus": 8,
    "memory": 16384,
    "disk": 100,
    "arch": "x86_64",
    "capabilities": "profile:control",
}


def _write(tmp_path: Path, nodes: object) -> Path:
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump({"nodes": nodes}))
    return path


@pytest.mark.parametrize("change, expected", [
    ({"mac_address": "52-54-00-aa-bb-01"}, "nodes.n1.mac_address: '52-54-00-aa-bb-01': a MAC address is six"),
    ({"capabilities": "profile:storage"}, "nodes.n1.capabilities: 'profile:storage': capabilities need exactly one "
                                          "of profile:control, profile:compute"),
    ({"capabilities": "boot_option:local"}, "nodes.n1.capabilities: 'boot_option:local': capabilities need exactly "
                                            "one of profile:control, profile:compute"),
    ({"pm_type": "pxe_ssh"}, "nodes.n1.pm_type: 'pxe_ssh': Input should be 'ipmi', 'pxe_ipmitool'"),
    ({"memory": 512}, "nodes.n1.memory: 512: Input should be greater than or equal to 1024"),
    ({"cpus": "many"}, "nodes.n1.cpus: 'many': Input should be a valid integer"),
    ({"ipmi_password": "x"}, "nodes.n1.ipmi_password: unknown key (allowed: arch, capabilities, cpus, disk, "
                             "ipmi_ip, ipmi_pass, ipmi_user, mac_address, memory, pm_port, pm_type)"),
    ({"ipmi_pass": None}, "nodes.n1.ipmi_pass: None: Input should be a valid string"),
], ids=["mac", "profile", "no-profile", "pm_type", "memory", "cpus", "unknown-key", "no-password"])
def test_node_errors_name_file_key_value_and_what_is_allowed(tmp_path, change, expected) -> None:
    path = _write(tmp_path, {"n1": {**GOOD, **change}})
    with pytest.raises(SettingsError) as err:
        load_inventory(path)
    assert f"{path}: {expected}" in err.value.message


def test_missing_key_and_duplicate_mac_are_all_reported_at_once(tmp_path) -> None:
    second = {k: v for k, v in GOOD.items() if k != "disk"}
    third = {**GOOD, "capabilities": "profile:compute"}
    path = _write(tmp_path, {"n1": GOOD, "n2": second})
    with pytest.raises(SettingsError) as err:
        load_inventory(path)
    assert f"{path}: nodes.n2.disk: required key is missing" in err.value.message
    path = _write(tmp_path, {"n1": GOOD, "n3": third})
    with pytest.raises(SettingsError) as err:
        load_inventory(path)
    assert "nodes.n3.mac_address: '52:54:00:aa:bb:01': already the MAC of node n1" in err.value.message


@pytest.mark.parametrize("text, expected", [
    ("nodes: {}\n", "nodes: {}: Dictionary should have at least 1 item"),
    ("- a\n", "expected a mapping"),
    ("nodes: [\n", "not valid YAML"),
], ids=["no-nodes", "not-a-mapping", "bad-yaml"])
def test_file_level_errors(tmp_path, text, expected) -> None:
    path = tmp_path / "inventory.yaml"
    path.write_text(text)
    with pytest.raises(SettingsError, match=expected.replace("[", r"\[").replace("{", r"\{").replace("}", r"\}")):
        load_inventory(path)


def test_missing_file(tmp_path) -> None:
    with pytest.raises(SettingsError, match="inventory .*nope.yaml: no such file"):
        load_inventory(tmp_path / "nope.yaml")


def test_instackenv_is_tripleos_node_import_format() -> None:
    inv = load_inventory(REPO / "config" / "inventory" / "virtual-ha.yaml")
    data = json.loads(inv.instackenv())
    assert [n["name"] for n in data["nodes"]] == ["control0", "control1", "control2", "compute0", "compute1"]
    first = data["nodes"][0]
    assert first == {
        "name": "control0", "pm_type": "ipmi", "pm_addr": "192.168.122.1", "pm_user": "admin",
        "pm_password": "password", "pm_port": "6230", "mac": ["52:54:00:a0:00:10"], "cpu": "4",
        "memory": "10240", "disk": "41", "arch": "x86_64", "capabilities": "profile:control",
    }
    assert (inv.count("control"), inv.count("compute")) == (3, 2)
    assert inv.instackenv() == load_inventory(inv.path).instackenv()
