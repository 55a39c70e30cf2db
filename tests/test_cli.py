"""The collection through both programs: `apex` (ours) and `invoke` (from the checkout)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from apex_tools.core.errors import NotBuiltError
from apex_tools.tasks import options_from
from apex_tools.core.run import RunContext, Status
from apex_tools.targets import ALL, not_built
from apex_tools.tasks import ns
from invoke import Config

from conftest import REPO, free_port

TARGETS = ["fetch-images", "undercloud", "patch-containers", "ceph-loop", "push-registry", "deploy"]
PROGRAMS = {"apex": [sys.executable, "-m", "apex_tools"], "invoke": [sys.executable, "-m", "invoke"]}


def cli(program: str, *args: str, env: dict[str, str] | None = None, cwd=REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PROGRAMS[program], *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=60)


@pytest.mark.parametrize("program", PROGRAMS)
def test_list_shows_the_six_targets_with_help(program):
    result = cli(program, "--list")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for target in TARGETS:
        line = next((l for l in lines if l.split() and l.split()[0] == target), None)
        assert line is not None and len(line.split()) > 1, f"{target} missing or without help:\n{result.stdout}"


@pytest.mark.parametrize("task", sorted(ns.task_names))
def test_every_task_has_help_for_every_flag(task):
    result = cli("apex", task, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage: apex" in result.stdout
    # Read the help as printed: Invoke pops a task's help texts when it first builds its
    # arguments, so get_arguments() in a process that already ran a task has none left.
    flag_lines = {l.split()[0]: l for l in result.stdout.splitlines() if l.strip().startswith("--")}
    for arg in ns[task].get_arguments():
        flag = f"--{arg.name.replace('_', '-')}"
        line = next((l for f, l in flag_lines.items() if f.split("=")[0] == flag), None)
        assert line is not None and len(line.split()) > 1, f"{task} {flag} has no help:\n{result.stdout}"
    if task in TARGETS:
        assert "--force" in result.stdout and "--dry-run" in result.stdout


def test_deploy_runs_the_flow_in_design_order():
    assert ALL == ("fetch-images", "undercloud", "patch-containers", "ceph-loop", "push-registry", "deploy")


@pytest.mark.parametrize("program", PROGRAMS)
def test_deploy_dry_run_prints_the_plan_of_every_target_and_touches_nothing(program, tmp_path):
    # Only loopback is ever addressed: the bundled network settings' 192.0.2.1 is not.
    env = {"PATH": "/usr/bin:/bin", "APEX_WORK_DIR": str(tmp_path / "work"), "APEX_IMAGE_DIR": str(tmp_path / "img"),
           "APEX_NO_FETCH": "1", "APEX_REGISTRY_ADDRESS": f"127.0.0.1:{free_port()}"}
    result = cli(program, "deploy", "--dry-run", "--json", env=env)
    assert result.returncode == 0, result.stderr
    import json

    rows = json.loads(result.stdout)
    assert [r["target"] for r in rows] == TARGETS
    assert all(r["changes"] for r in rows)
    assert not (tmp_path / "work").exists()


def test_runtime_config_file_is_honoured_by_both_programs(tmp_path):
    conf = tmp_path / "lab.yaml"
    conf.write_text("registry:\n  address: 127.0.0.1:5999\nbuilder: buildah\n")
    for program in PROGRAMS:
        result = cli(program, "-f", str(conf), "config")
        assert result.returncode == 0, result.stderr
        line = next(l for l in result.stdout.splitlines() if l.startswith("registry.address"))
        assert "127.0.0.1:5999" in line and f"runtime file {conf}" in line


def test_config_shows_environment_source():
    result = cli("apex", "config", "--key", "jobs", env={"APEX_JOBS": "7", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert "7" in result.stdout and "# environment" in result.stdout


def test_bad_settings_stop_with_exit_2_and_the_message(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("global_params: {}\n")
    result = cli("apex", "deploy", "--dry-run", env={"APEX_DEPLOY_SETTINGS": str(bad), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert f"{bad}: global_params.ha_enabled: required key is missing" in result.stderr
    assert "Traceback" not in result.stderr


def test_placeholder_plans_in_a_dry_run_and_fails_a_real_run():
    target = not_built("undercloud", "no issue yet")
    options = options_from(Config(), {}).options
    planned = target(RunContext(options, dry_run=True))
    assert planned.status is Status.NOT_BUILT and "not built yet" in planned.changes[0]
    with pytest.raises(NotBuiltError, match="undercloud: this target is not built yet"):
        target(RunContext(options))


def test_a_failing_target_stops_the_chain_with_a_clean_message(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "APEX_WORK_DIR": str(tmp_path / "work"), "APEX_IMAGE_DIR": str(tmp_path / "img"),
           "APEX_UNDERCLOUD_DRIVER": "existing"}
    result = cli("apex", "undercloud", env=env)
    assert result.returncode == 1
    assert "apex: undercloud.host is empty (the existing driver needs it)" in result.stderr
    assert "Traceback" not in result.stderr
    assert (tmp_path / "work" / "apex.log").is_file()


def test_summary_prints_brackets_literally(capsys):
    from apex_tools.core.console import Output
    from apex_tools.core.run import Item, TargetResult

    Output(quiet=True, verbose=True).summary([TargetResult("ceph-loop", Status.CHANGED, ["devices [/dev/sdb]"],
                                             [Item("[bold]x", "ok", "[/red]")])])
    out = capsys.readouterr().out
    assert "devices [/dev/sdb]" in out and "[bold]x" in out and "[/red]" in out


def test_config_never_prints_passwords():
    result = cli("apex", "config", env={"APEX_REGISTRY_PASSWORD": "s3cret", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert "s3cret" not in result.stdout
    assert "********" in next(l for l in result.stdout.splitlines() if l.startswith("registry.password"))


def test_config_shows_the_releases_ceph_image_not_an_empty_string(tmp_path):
    result = cli("apex", "config", env={"PATH": "/usr/bin:/bin", "APEX_DEPLOY_SETTINGS": "os-nosdn-queens_upstream-noha"})
    assert result.returncode == 0, result.stderr
    lines = {l.split()[0]: l for l in result.stdout.splitlines() if l.strip()}
    assert lines["upstream.ceph_registry"].split()[1] == "docker.io"
    assert "queens's (tripleo-common)" in lines["upstream.ceph_registry"]
    assert lines["ceph.namespace"].split()[1] == "ceph" and lines["ceph.image"].split()[1] == "daemon"
    assert lines["ceph.tag"].split()[1].endswith("-luminous-centos-7-x86_64")
    result = cli("apex", "config", "--key", "ceph.tag", env={"PATH": "/usr/bin:/bin", "APEX_CEPH_TAG": "v9"})
    assert result.stdout.split()[1] == "v9" and "# environment" in result.stdout


def test_apex_start_up_skips_what_invoke_loads_for_nothing_and_leaves_the_real_modules_after():
    """The entry point gives Invoke PyYAML and a passing stand-in for unittest.mock: no asyncio,
    no vendored YAML; a later ``import unittest.mock`` is the real one; the console script and
    ``python -m apex_tools`` both go through it."""
    code = (
        "import sys, apex_tools.__main__ as m; m._lighter_invoke(); import apex_tools.main, invoke.util, yaml; "
        "loaded = sorted(n for n in ('asyncio', 'unittest.mock', 'invoke.vendor.yaml.reader') if n in sys.modules); "
        "import unittest.mock; "
        "print(loaded, invoke.util.yaml is yaml, hasattr(unittest.mock, 'patch'), unittest.mock is sys.modules['unittest.mock'])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["[]", "True", "True", "True"]
    scripts = (REPO / "pyproject.toml").read_text()
    assert 'apex = "apex_tools.__main__:main"' in scripts
    version = cli("apex", "--version")
    assert version.returncode == 0 and version.stdout.startswith("apex-tools"), version.stderr


def test_apex_exits_without_teardown_yet_flushes_its_log_and_output(tmp_path):
    """``apex`` ends with os._exit after the atexit callbacks: the log file's last record and
    every line of a long output still arrive, and the exit code is the program's."""
    import os

    env = {**os.environ, "APEX_WORK_DIR": str(tmp_path / "work"), "APEX_IMAGE_DIR": str(tmp_path / "images")}
    failed = cli("apex", "fetch-images", "--no-fetch", env=env, cwd=tmp_path)
    assert failed.returncode == 1, failed.stderr
    log = (tmp_path / "work" / "apex.log").read_text()
    assert log.rstrip().endswith("or put the file there by hand"), log[-500:]
    listed = cli("apex", "config", cwd=tmp_path)
    inside = subprocess.run([sys.executable, "-c", "import sys; sys.argv = ['apex', 'config']\n"
                             "from apex_tools.main import program; program.run()"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert listed.returncode == inside.returncode == 0 and listed.stdout == inside.stdout
