"""The command deploy writes, run through each release's own python-tripleoclient from PyPI:
its ``overcloud deploy`` parser, ``_validate_args`` and every check it makes before it needs a
cloud (tests/overcloud/tripleoclient_driver.py), with stdin closed as deploy_overcloud.yaml
runs it. No prompt may stop it ("Action not confirmed").

Each client is installed with ``--no-deps`` in a venv made from /usr/bin/python3, with the
matching tripleo-common and the few libraries its command module imports (the cloud clients'
packages are imported, never called); the venvs are cached under
``~/.cache/apex-tools/tripleoclient/`` so a second run (CI's) is fast. The tripleo-heat-templates
tree is the release's sdist the catalog was generated from, standing in for
/usr/share/openstack-tripleo-heat-templates.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from apex_tools.catalog.generate import default_cache, release_sdists, unpack
from apex_tools.catalog.tht import heat_templates
from apex_tools.core.settings import load_deploy_settings, load_network_settings
from apex_tools.core.workdir import PARAMETER_FILE, STORAGE_ENV
from apex_tools.overcloud.command import THT_ROOT, DeployPlan, command_args, deploy_files
from apex_tools.overcloud.inventory import load_inventory, scale_of
from conftest import REPO, need

DRIVER = Path(__file__).with_name("tripleoclient_driver.py")
PYTHON = "/usr/bin/python3"
# What python-tripleoclient's command module imports, beside the client and its tripleo-common.
COMMON = ("pbr", "six", "prettytable", "PyYAML", "osc-lib", "python-heatclient", "python-swiftclient",
          "python-dateutil", "oslo.concurrency", "simplejson", "Jinja2", "eventlet", "GitPython",
          "python-openstackclient", "tenacity")
# release → (the client, its tripleo-common (both --no-deps), what else its version imports)
CLIENTS = {
    # 11.5.2 calls yaml.load() without a Loader: PyYAML 6 refuses that.
    "stein": ("python-tripleoclient==11.5.2", "tripleo-common>=10,<11", ("PyYAML==5.3.1",)),
    "train": ("python-tripleoclient==12.6.0", "tripleo-common>=11.4,<12", ()),
    "master": ("python-tripleoclient==20.0.0", "tripleo-common>=18,<19", ("passlib", "ansible-runner", "ansible-core")),
}
PROMPTS = ("Action not confirmed", "User interaction required", "[y/N]")


def _pip(python: Path, *args: str) -> None:
    done = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *args],
                          capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise AssertionError(f"pip install {' '.join(args)} failed:\n{done.stderr[-3000:]}")


def client_python(release: str) -> Path:
    """The python of a venv holding ``release``'s client, built once (atomically) and cached."""
    client, common, extra = CLIENTS[release]
    spec = json.dumps([client, common, extra, COMMON, sys.version_info[:2]])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "apex-tools" / "tripleoclient"
    venv = cache / f"{client.split('==')[1]}-{hashlib.sha256(spec.encode()).hexdigest()[:12]}"
    if not (venv / "bin" / "python").is_file():
        partial = venv.with_name(venv.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        subprocess.run([PYTHON, "-m", "venv", str(partial)], check=True, timeout=300)
        python = partial / "bin" / "python"
        _pip(python, "--no-deps", client, common)
        _pip(python, *COMMON)
        if extra:  # after the common ones: a release may pin one of them
            _pip(python, *extra)
        # A venv runs from wherever it lies as long as it is started through its bin/python.
        partial.rename(venv)
    return venv / "bin" / "python"


def tht_tree(release: str) -> Path:
    """The unpacked tripleo-heat-templates sdist the bundled facts of ``release`` name."""
    _, tht = release_sdists(default_cache(), release, REPO / "build" / "tripleo")
    return unpack(tht)


def _write_deploy_files(work: Path, scenario: str, release: str) -> DeployPlan:
    ds_text = (REPO / "config" / "deploy" / f"{scenario}.yaml").read_text()
    settings = work / f"{scenario}.yaml"
    data = yaml.safe_load(ds_text)
    data["deploy_options"]["os_version"] = release
    settings.write_text(yaml.safe_dump(data))
    ds = load_deploy_settings(settings)
    ns = load_network_settings(REPO / "config" / "network" / "network_settings.yaml")
    inventory = load_inventory(REPO / "config" / "inventory" / "virtual.yaml")
    plan = DeployPlan(ds, ns, scale_of(inventory, ds.global_params.ha_enabled), heat_templates(release), True,
                      "qemu", 120, ceph=ds.deploy_options.ceph)
    for name, text in deploy_files(plan, inventory, "network_settings.yaml").items():
        (work / name).write_text(text)
    # push-registry's and ceph-loop's outputs, in their shape.
    (work / PARAMETER_FILE).write_text(yaml.safe_dump({"parameter_defaults": {
        "ContainerNovaApiImage": "192.0.2.1:8787/tripleomaster/openstack-nova-api:current-tripleo"}}))
    (work / STORAGE_ENV).write_text(yaml.safe_dump({"parameter_defaults": {"CephAnsibleDisksConfig": {
        "devices": ["/dev/loop3"]}}}))
    return plan


def run_client(release: str, scenario: str, work: Path) -> tuple[dict[str, object], str]:
    """Run ``release``'s client on the command deploy writes for ``scenario``; (outcome, stderr)."""
    plan = _write_deploy_files(work, scenario, release)
    tree = str(tht_tree(release))
    args = [a.replace(THT_ROOT, tree) for a in command_args(plan)[3:]]
    args[args.index("--templates")] = f"--templates={tree}"
    home = work / "home"
    home.mkdir(exist_ok=True)
    done = subprocess.run([str(client_python(release)), str(DRIVER), *args], cwd=work, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=300,
                          env={"PATH": os.environ["PATH"], "HOME": str(home), "LANG": "C.UTF-8"})
    assert done.returncode == 0, f"the driver failed:\n{done.stdout}\n{done.stderr[-4000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


@pytest.fixture(scope="module", autouse=True)
def _python() -> None:
    need(Path(PYTHON).is_file(), "Debian's /usr/bin/python3 (the clients' venvs are made from it)")


@pytest.mark.parametrize("release", sorted(CLIENTS))
def test_each_release_client_takes_the_command_without_a_prompt(release: str, tmp_path: Path) -> None:
    outcome, stderr = run_client(release, "os-nosdn-nofeature-noha", tmp_path)
    assert outcome["outcome"] == "reached", f"{release}'s client refused the command: {outcome}\n{stderr[-3000:]}"
    assert not [p for p in PROMPTS if p in stderr], stderr[-3000:]
    if release == "master":
        assert outcome["disable_container_prepare"] is True
