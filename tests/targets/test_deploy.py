"""The deploy target through the local undercloud driver (and once over SSH, the existing driver against a
loopback sshd), with real playbooks (ansible-playbook,
local connection) and a real registry; TripleO's `openstack` is the only stand-in (a script on
PATH that records its arguments and plays the stack: created, failed, or absent).

Without `openstack` on the undercloud the target ends `ready`; with it, it runs both playbooks,
and a failing deploy brings back the stack's failures and the deploy's output.
"""

from __future__ import annotations

import getpass
import json
import os
import shlex
import shutil
import stat
from pathlib import Path

import pytest
import yaml
from invoke import Config, Context
from invoke.exceptions import Exit

import apex_tools.overcloud.stack as stack_module
import apex_tools.targets.deploy as deploy_module
from apex_tools.catalog.tht import HeatTemplates
from apex_tools.core.config import Layer, resolve
from apex_tools.core.errors import UndercloudError
from apex_tools.core.run import RunContext, Status
from apex_tools.overcloud.preflight import PreflightError
from apex_tools.registry.client import RegistryClient
from apex_tools.targets.deploy import deploy

from conftest import need
from registry_support import layer_blob, push_image

IMAGES = ("nova-api", "keystone")
THT = HeatTemplates("master", frozenset({"ContainerNovaApiImage", "ContainerNovaConfigImage", "ContainerKeystoneImage"}),
                    frozenset({"environments/docker-ha.yaml", "environments/ceph-ansible/ceph-ansible.yaml"}))

# TripleO's client as far as the playbooks and the target use it; state in $FAKE_OS_DIR.
OPENSTACK = r"""#!/bin/bash
echo "$*" >> "$FAKE_OS_DIR/calls"
case "$1 $2" in
  "help overcloud") exit 0 ;;
  "stack show")
    if [ -f "$FAKE_OS_DIR/stack" ]; then cat "$FAKE_OS_DIR/stack"; exit 0; fi
    echo "Stack not found: overcloud" >&2; exit 1 ;;
  "stack failures")
    echo "overcloud.AllNodesDeploySteps.ControllerDeployment_Step1.0:"
    echo "  resource_status: CREATE_FAILED"
    echo "  deploy_stderr: Error: Could not find class ::tripleo::profile::base::apex" ;;
  "overcloud deploy")
    printf '%s\n' "$@" > "$FAKE_OS_DIR/deploy-args"
    echo "Deploying templates in the directory /usr/share/openstack-tripleo-heat-templates"
    if [ -f "$FAKE_OS_DIR/fail" ]; then
      echo CREATE_FAILED > "$FAKE_OS_DIR/stack"; echo "Stack overcloud CREATE_FAILED"; exit 1
    fi
    echo CREATE_COMPLETE > "$FAKE_OS_DIR/stack"; echo "Overcloud Deployed" ;;
esac
exit 0
"""


@pytest.fixture
def lab(tmp_path, registry, monkeypatch):
    """A work dir as the other targets leave it, over a real registry holding the images it names."""
    need(shutil.which("ansible-playbook") is not None, "ansible-playbook (Debian package ansible-core)")
    assert shutil.which("openstack") is None, "a real openstack client is on PATH; these tests need it absent"
    client = RegistryClient(registry.address, tls="http")
    for name in IMAGES:
        push_image(client, f"tripleomaster/centos-binary-{name}", "current-tripleo", [layer_blob(name, 200)])
    work, images, home = tmp_path / "work", tmp_path / "images", tmp_path / "home"
    for folder in (work, images / "master", home):
        folder.mkdir(parents=True)
    params = {
        "ContainerNovaApiImage": f"{registry.address}/tripleomaster/centos-binary-nova-api:current-tripleo",
        "ContainerNovaConfigImage": f"{registry.address}/tripleomaster/centos-binary-nova-api:current-tripleo",
        "ContainerKeystoneImage": f"{registry.address}/tripleomaster/centos-binary-keystone:current-tripleo",
        "DockerInsecureRegistryAddress": [registry.address],
    }
    (work / "docker-images.yaml").write_text(yaml.safe_dump({"parameter_defaults": params}))
    for name in ("overcloud_containers.yaml", "sdn_containers.yaml"):
        (work / name).write_text("container_images: []\n")
    (work / "storage-environment.yaml").write_text("parameter_defaults: {CephPoolDefaultSize: 1}\n")
    (work / "overcloud-full.qcow2").write_bytes(b"QFI\xfb customized")
    for name in ("overcloud-full.vmlinuz", "overcloud-full.initrd", "ironic-python-agent.kernel",
                 "ironic-python-agent.initramfs"):
        (images / "master" / name).write_bytes(name.encode())
    (home / "stackrc").write_text("export OS_CLOUD=undercloud\n")
    # Until the catalog issue's bundled THT facts land, the release's facts are given here.
    monkeypatch.setattr(stack_module, "heat_templates", lambda os_version: THT)  # deploy reads them through it
    data = {
        "work_dir": str(work), "image_dir": str(images), "deploy_settings": "os-nosdn-nofeature-noha",
        "inventory_file": "virtual", "registry": {"address": registry.address},
        "undercloud": {"driver": "local", "user": getpass.getuser(), "home": str(home)},
        "deploy": {"libvirt_type": "qemu"}, "ceph": {"virtual": True},
    }
    fake = tmp_path / "fake-openstack"
    fake.mkdir()

    def with_tripleo() -> None:
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir(exist_ok=True)
        script = bin_dir / "openstack"
        script.write_text(OPENSTACK)
        script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
        monkeypatch.setenv("FAKE_OS_DIR", str(fake))

    def options(**extra):
        return resolve([Layer("test", {**data, **extra})]).options

    return {"work": work, "home": home, "fake": fake, "options": options, "with_tripleo": with_tripleo,
            "registry": registry, "params": params, "data": data}


def test_without_tripleo_the_target_ends_ready_then_is_up_to_date(lab):
    work = lab["work"]
    planned = deploy(RunContext(lab["options"](), dry_run=True))
    assert planned.status is Status.PLANNED
    assert any("ready:" in line and "not run" in line for line in planned.changes)
    assert not (work / "deploy_command").exists()

    result = deploy(RunContext(lab["options"]()))
    assert result.status is Status.READY and not result.failed
    assert any(line.startswith("ready: deploy_command (in the work dir); not run: the undercloud (local driver) has no "
                               "TripleO") for line in result.changes)
    # One line for the written files, named relative to the work dir (80 columns).
    assert "wrote deploy_command, instackenv.json, network-environment.yaml, upstream-environment.yaml, " \
        "virtual-environment.yaml, network_data.yaml" in result.changes, result.changes
    command = (work / "deploy_command").read_text()
    assert command.startswith("openstack overcloud deploy --templates --timeout 120 -e network-environment.yaml ")
    assert " -e docker-images.yaml " in command and command.endswith(" --libvirt-type qemu\n")
    assert stat.S_IMODE((work / "instackenv.json").stat().st_mode) == 0o600
    assert [p.status for p in result.items if p.name == "pre-flight"] == ["ok"] * 5
    assert "2 images pullable" in " ".join(i.detail for i in result.items)

    again = deploy(RunContext(lab["options"]()))
    assert again.status is Status.UP_TO_DATE and "ready" in again.changes[0]
    # Same inputs, same bytes.
    assert (work / "deploy_command").read_text() == command

    changed = deploy(RunContext(lab["options"](deploy={"libvirt_type": "kvm"}),
                                dry_run=True))
    assert changed.status is Status.PLANNED and changed.changes[0] == f"write deploy_command in {work}"


def test_the_preflight_stops_the_target_on_a_missing_image(lab):
    params = {**lab["params"], "ContainerNovaApiImage":
              f"{lab['registry'].address}/tripleomaster/centos-binary-nova-api:apex"}
    (lab["work"] / "docker-images.yaml").write_text(yaml.safe_dump({"parameter_defaults": params}))
    with pytest.raises(PreflightError) as err:
        deploy(RunContext(lab["options"]()))
    assert err.value.message.splitlines()[0] == "pre-flight: 1 problem (images); the deploy was not started:"
    assert "centos-binary-nova-api:apex: no such manifest in the registry" in err.value.message
    assert lab["fake"].joinpath("calls").exists() is False
    assert deploy_module.TARGET not in [p.stem for p in (lab["work"] / "state").glob("*.json")]


def _calls(lab) -> list[str]:
    return (lab["fake"] / "calls").read_text().splitlines()


def test_with_tripleo_both_playbooks_run_and_the_command_runs_under_stackrc(lab):
    lab["with_tripleo"]()
    work, home = lab["work"], lab["home"]
    planned = deploy(RunContext(lab["options"](), dry_run=True))
    assert planned.changes[-1] == "stack create: no overcloud stack on the undercloud yet (first run)"

    result = deploy(RunContext(lab["options"]()))
    assert result.status is Status.CHANGED, result
    assert result.changes[-1] == "stack create: stack overcloud CREATE_COMPLETE"
    # The command ran as written, word for word, from the stack home.
    ran = (lab["fake"] / "deploy-args").read_text().splitlines()
    assert ["openstack", *ran] == shlex.split((work / "deploy_command").read_text())
    calls = _calls(lab)
    assert f"overcloud image upload --image-path {home}/images --update-existing" in calls
    assert f"overcloud node import {home}/instackenv.json" in calls
    assert "overcloud node provide --all-manageable" in calls  # virtual: no introspection
    assert not any(c.startswith("overcloud node introspect") for c in calls)
    for name in ("deploy_command", "instackenv.json", "network-environment.yaml", "upstream-environment.yaml",
                 "virtual-environment.yaml", "network_data.yaml", "storage-environment.yaml", "docker-images.yaml"):
        assert (home / name).read_bytes() == (work / name).read_bytes(), name
    assert (home / "images" / "overcloud-full.qcow2").read_bytes() == b"QFI\xfb customized"
    assert json.loads((home / "instackenv.json").read_text())["nodes"][0]["name"] == "control0"
    assert "Overcloud Deployed" in (work / "overcloud-deploy.log").read_text()

    again = deploy(RunContext(lab["options"]()))
    assert again.status is Status.UP_TO_DATE and again.changes == ["up to date (stack overcloud CREATE_COMPLETE)"]

    other = lab["options"](deploy={"libvirt_type": "kvm"})
    update = deploy(RunContext(other, dry_run=True))
    assert update.changes[-1] == "stack update: changed: deploy_command"


def test_a_failed_deploy_fetches_the_stack_failures_and_the_output_and_fails_the_step(lab):
    lab["with_tripleo"]()
    (lab["fake"] / "fail").touch()
    work = lab["work"]
    with pytest.raises(UndercloudError) as err:
        deploy(RunContext(lab["options"]()))
    message = err.value.message
    assert message.splitlines()[0].startswith("playbook deploy_overcloud.yaml: task 'Run the deploy command' failed")
    assert f"openstack stack failures list overcloud --long ({work / 'stack-failures.log'}), last lines:" in message
    assert "deploy_stderr: Error: Could not find class ::tripleo::profile::base::apex" in message
    assert "Stack overcloud CREATE_FAILED" in message
    assert "CREATE_FAILED" in (work / "stack-failures.log").read_text()
    assert "stack failures list overcloud --long" in _calls(lab)
    # Nothing recorded: the next run updates the failed stack.
    (lab["fake"] / "fail").unlink()
    planned = deploy(RunContext(lab["options"](), dry_run=True))
    assert planned.changes[-1] == "stack update: the stack is CREATE_FAILED (first run)"


def test_the_cli_shows_ready_and_exits_zero(lab, monkeypatch, capsys):
    from apex_tools.tasks import run_targets

    for key, value in {"APEX_WORK_DIR": str(lab["work"]), "APEX_IMAGE_DIR": lab["data"]["image_dir"],
                       "APEX_REGISTRY_ADDRESS": lab["registry"].address, "APEX_UNDERCLOUD_DRIVER": "local",
                       "APEX_UNDERCLOUD_USER": getpass.getuser(), "APEX_CEPH_VIRTUAL": "1",
                       "APEX_DEPLOY_LIBVIRT_TYPE": "qemu"}.items():
        monkeypatch.setenv(key, value)
    results = run_targets(Context(Config()), ["deploy"], force=False, dry_run=False, verbose=False, quiet=True,
                          json=True)
    assert [r.status for r in results] == [Status.READY]
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["status"] == "ready" and rows[0]["changes"][-1].startswith("ready: ")


def test_the_cli_refuses_ha_with_one_controller_before_any_target(lab, monkeypatch):
    from apex_tools.tasks import run_targets

    monkeypatch.setenv("APEX_WORK_DIR", str(lab["work"]))
    monkeypatch.setenv("APEX_DEPLOY_SETTINGS", "os-nosdn-nofeature-ha")
    with pytest.raises(Exit) as err:
        run_targets(Context(Config()), ["deploy"], force=False, dry_run=True, verbose=False, quiet=True)
    assert err.value.code == 2 and "HA needs 3 nodes with profile:control, the inventory has 1" in str(err.value)


def test_baremetal_nodes_are_introspected_before_the_deploy(lab):
    """deploy_overcloud.yaml alone, as the target runs it for baremetal (introspect: true)."""
    lab["with_tripleo"]()
    work, home = lab["work"], lab["home"]
    for name in ("deploy_command", "instackenv.json"):
        (work / name).write_text("openstack overcloud deploy --templates\n" if name == "deploy_command" else "{}\n")
    undercloud = deploy_module.driver_for(lab["options"](), lab["registry"].address)
    undercloud.run_playbook(deploy_module.DEPLOY_PLAYBOOK, {
        "apex_work_dir": str(work), "stack_home": str(home), "stack_user": getpass.getuser(),
        "local_files": ["deploy_command", "instackenv.json"], "upload_images": [],
        "baremetal": True, "introspect": True,
    }, work / "deploy_overcloud.log")
    calls = _calls(lab)
    order = [c.split()[2] for c in calls if c.startswith("overcloud node")]
    assert order == ["import", "introspect"] and "overcloud node introspect --all-manageable --provide" in calls
    assert (lab["fake"] / "deploy-args").read_text().splitlines() == ["overcloud", "deploy", "--templates"]


def test_over_ssh_an_existing_undercloud_runs_both_playbooks_and_the_command(lab, tmp_path):
    """The same deploy against an `existing` undercloud: a real sshd on loopback, the playbooks
    over SSH, the command run there under stackrc; `openstack` is the stand-in on its PATH."""
    from ssh_support import run_sshd

    work, home, fake = lab["work"], lab["home"], lab["fake"]
    with run_sshd(tmp_path / "sshd") as server:
        # sshd hands its sessions a PATH with bin_dir first; the stand-in keeps its state in `fake`.
        script = server.bin_dir / "openstack"
        script.write_text(OPENSTACK.replace("#!/bin/bash\n", f"#!/bin/bash\nFAKE_OS_DIR={shlex.quote(str(fake))}\n", 1))
        script.chmod(0o755)
        options = lab["options"](undercloud={"driver": "existing", "host": server.host, "port": server.port,
                                             "user": server.user, "ssh_key": str(server.key), "home": str(home)})
        result = deploy(RunContext(options))
        assert result.status is Status.CHANGED, result
        assert result.changes[-1] == "stack create: stack overcloud CREATE_COMPLETE"
        ran = (fake / "deploy-args").read_text().splitlines()
        assert ["openstack", *ran] == shlex.split((work / "deploy_command").read_text())
        assert f"overcloud node import {home}/instackenv.json" in _calls(lab)
        assert (home / "docker-images.yaml").read_bytes() == (work / "docker-images.yaml").read_bytes()
        assert "Overcloud Deployed" in (work / "overcloud-deploy.log").read_text()
        again = deploy(RunContext(options))
        assert again.status is Status.UP_TO_DATE, again
