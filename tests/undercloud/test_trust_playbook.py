"""configure_undercloud.yaml's containers-trust tasks run for real by ansible-playbook (under a
folder standing for /): the undercloud's podman gets the same policy, registries.d entry and
public key as the overcloud image."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import yaml

from apex_tools.core.config import Layer, resolve
from apex_tools.core.resources import data_path
from apex_tools.trust.node import node_files

from conftest import need

REGISTRY = "192.0.2.1:8787"


def test_undercloud_podman_gets_the_policy_registries_d_and_key(tmp_path: Path) -> None:
    need(shutil.which("ansible-playbook") is not None, "ansible-playbook (Debian package ansible-core)")
    options = resolve([Layer("test", {"work_dir": str(tmp_path / "work")})]).options
    files = {path: content.decode() for path, content in node_files(options, REGISTRY).items()}
    root = tmp_path / "root"
    (tmp_path / "vars.json").write_text(json.dumps({"containers_trust": files, "trust_root": str(root)}))
    (tmp_path / "inventory").write_text("undercloud ansible_connection=local ansible_python_interpreter=/usr/bin/python3\n")
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_LOCALHOST_WARNING": "0", "ANSIBLE_RETRY_FILES_ENABLED": "0"}
    playbook = data_path("ansible", "playbooks", "configure_undercloud.yaml")
    for _ in range(2):
        done = subprocess.run(
            ["ansible-playbook", "-i", str(tmp_path / "inventory"), str(playbook), "--tags", "containers_trust",
             "-e", "ansible_become=false", "-e", f"@{tmp_path / 'vars.json'}"],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
    assert "changed=0" in done.stdout  # the second run changes nothing
    policy = json.loads((root / "etc/containers/policy.json").read_text())
    assert policy["transports"]["docker"][REGISTRY][0]["keyPath"] == "/etc/pki/containers/apex-tools.pub"
    assert yaml.safe_load((root / "etc/containers/registries.d/apex-tools.yaml").read_text()) == {
        "docker": {REGISTRY: {"use-sigstore-attachments": True}}}
    assert (root / "etc/pki/containers/apex-tools.pub").read_bytes() == (
        tmp_path / "work" / "signing" / "signing.pub").read_bytes()
    assert not any("PRIVATE" in p.read_text() for p in root.rglob("*") if p.is_file())
