"""Configuration layering (defaults < files < APEX_* < flags), provenance and errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from invoke import Config

from apex_tools.core.config import (
    DEFAULTS,
    KNOWN_KEYS,
    Layer,
    env_name,
    resolve,
    settings_path,
)
from apex_tools.tasks import INVOKE_KEYS, options_from
from apex_tools.core.errors import SettingsError
from apex_tools.core.resources import data_path
from apex_tools.core.run import RunContext


def runtime_config(tmp_path, text: str) -> Config:
    path = tmp_path / "apex.yaml"
    path.write_text(text)
    config = Config(runtime_path=str(path))
    config.load_runtime()
    return config


def test_defaults_match_the_documented_keys():
    effective = options_from(Config(), {})
    opts = effective.options
    assert opts.upstream.images_url == "https://images.rdoproject.org/{os_version}/rdo_trunk/current-tripleo/"
    assert (opts.upstream.registry, opts.upstream.namespace) == ("docker.io", "tripleo{os_version}")
    assert (opts.upstream.name_prefix, opts.upstream.tag) == ("centos-binary-", "current-tripleo")
    assert opts.gerrit.url == "https://review.opendev.org"
    assert opts.registry.address == "" and (opts.builder, opts.builder_fallback) == ("native", "docker")
    assert set(effective.sources.values()) == {"default"}


def test_layers_in_order_file_then_env_then_flags(tmp_path):
    config = runtime_config(tmp_path, "builder: buildah\nregistry:\n  address: 127.0.0.1:5000\njobs: 2\n")
    env = {"APEX_REGISTRY_ADDRESS": "127.0.0.1:6000", "APEX_JOBS": "3"}
    effective = options_from(config, env, {"jobs": 8})
    assert effective.options.builder == "buildah"
    assert effective.sources["builder"].startswith("runtime file ")
    assert effective.options.registry.address == "127.0.0.1:6000"
    assert effective.sources["registry.address"] == "environment"
    assert effective.options.jobs == 8 and effective.sources["jobs"] == "flag"
    assert effective.sources["upstream.tag"] == "default"


def test_env_names_are_prefixed_sections():
    assert env_name("registry.address") == "APEX_REGISTRY_ADDRESS"
    assert env_name("upstream.images_url") == "APEX_UPSTREAM_IMAGES_URL"
    assert len({env_name(k) for k in KNOWN_KEYS}) == len(KNOWN_KEYS)


@pytest.mark.parametrize(
    "env,expected",
    [
        ({"APEX_UPSTREAM_INSECURE": "yes"}, True),
        ({"APEX_UPSTREAM_INSECURE": "0"}, False),
    ],
    ids=["yes-is-true", "zero-is-false"],
)
def test_env_booleans(env, expected):
    assert options_from(Config(), env).options.upstream.insecure is expected


BAD = [
    ("unknown-top-key", "buidler: docker\n", {}, ["runtime file", "buidler: unknown key (allowed:", "builder"]),
    ("unknown-section-key", "registry:\n  adress: x\n", {}, ["registry.adress: unknown key (allowed: registry.address, registry.insecure"]),
    ("bad-builder", "builder: podman\n", {}, ["builder: 'podman':", "'native', 'docker' or 'buildah'"]),
    ("jobs-zero", "jobs: 0\n", {}, ["jobs: 0:", "greater than or equal to 1"]),
    ("env-bad-bool", "", {"APEX_REGISTRY_INSECURE": "perhaps"}, ["environment APEX_REGISTRY_INSECURE: registry.insecure: 'perhaps' is not a boolean"]),
    ("env-bad-int", "", {"APEX_JOBS": "many"}, ["environment APEX_JOBS: jobs: 'many' is not a number"]),
    ("section-not-mapping", "upstream: docker.io\n", {}, ["upstream: 'docker.io' is not a mapping"]),
]


@pytest.mark.parametrize("text,env,expected", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_configuration_names_source_key_value_and_allowed(tmp_path, text, env, expected):
    config = runtime_config(tmp_path, text) if text else Config()
    with pytest.raises(SettingsError) as err:
        options_from(config, env)
    for fragment in expected:
        assert fragment in str(err.value), str(err.value)


def test_invoke_keys_in_the_same_file_are_allowed():
    effective = resolve([Layer("file", {"run": {"echo": True}, "tasks": {"dedupe": False}})], INVOKE_KEYS)
    assert effective.options.builder == DEFAULTS["builder"]


def test_registry_address_defaults_to_installer_ip_port_8787():
    run = RunContext(options_from(Config(), {}).options)
    assert run.registry_address == "192.0.2.1:8787"
    run = RunContext(options_from(Config(), {"APEX_REGISTRY_ADDRESS": "127.0.0.1:5000"}).options)
    assert run.registry_address == "127.0.0.1:5000"


def test_settings_path_bundled_names_and_files(tmp_path):
    assert settings_path("os-nosdn-nofeature-noha", "deploy").is_file()
    mine = tmp_path / "mine.yaml"
    assert settings_path(str(mine), "deploy") == mine
    with pytest.raises(SettingsError, match="os-nosdn-nofeature-noha"):
        settings_path("no-such-scenario", "deploy")


def test_expand_fills_os_version(tmp_path):
    scenario = tmp_path / "queens.yaml"
    scenario.write_text("global_params: {ha_enabled: false}\ndeploy_options: {os_version: queens}\n")
    run = RunContext(options_from(Config(), {"APEX_DEPLOY_SETTINGS": str(scenario)}).options)
    assert run.expand(run.options.upstream.namespace) == "tripleoqueens"


def test_a_bundled_name_is_never_shadowed_by_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lab").mkdir()  # a folder named like the bundled inventory
    (tmp_path / "virtual").write_text("nodes: {}\n")
    for name in ("lab", "virtual"):
        assert settings_path(name, "inventory") == data_path("config", "inventory", f"{name}.yaml")
    assert settings_path("./virtual", "inventory") == Path("./virtual")


def test_a_work_dir_with_a_control_character_is_refused_at_load():
    with pytest.raises(SettingsError, match=r"work_dir: .*control character \\n"):
        resolve([Layer("test", {"work_dir": "/srv/apex\nx"})])


def test_no_python_config_file_is_ever_executed_and_apex_config_names_the_project_file(tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    marker = tmp_path / "executed"
    home = tmp_path / "home"
    home.mkdir()
    code = f"open({str(marker)!r}, 'w').write('x')\njobs = 9\n"
    (tmp_path / "apex.py").write_text(code)  # Invoke's loader would run these
    (home / ".apex.py").write_text(code)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-m", "apex_tools", "config"], capture_output=True, text=True, cwd=tmp_path,
                         env=env, timeout=60)
    assert run.returncode == 0, run.stderr
    assert not marker.exists()
    assert run.stdout.splitlines()[0] == f"# project file: none (no apex.yaml or apex.yml in {tmp_path})"
    assert next(l for l in run.stdout.splitlines() if l.startswith("jobs ")).split()[1] == "4"
    (tmp_path / "apex.yaml").write_text("jobs: 3\n")
    run = subprocess.run([sys.executable, "-m", "apex_tools", "config"], capture_output=True, text=True, cwd=tmp_path,
                         env=env, timeout=60)
    assert run.stdout.splitlines()[0] == f"# project file: {tmp_path / 'apex.yaml'}"
    assert not marker.exists()


def test_the_old_stack_home_key_is_read_as_undercloud_home_with_a_deprecation_line(caplog) -> None:
    from apex_tools.core.config import effective_config

    old = resolve([Layer("apex.yaml", {"deploy": {"stack_home": "/srv/stack"}})]).options
    assert old.undercloud.home == "/srv/stack"
    assert "apex.yaml: deploy.stack_home is deprecated: it is now undercloud.home" in caplog.text
    both = resolve([Layer("f", {"deploy": {"stack_home": "/old"}, "undercloud": {"home": "/new"}})]).options
    assert both.undercloud.home == "/new" and "(ignored: undercloud.home is set too)" in caplog.text
    env = effective_config([], {"APEX_DEPLOY_STACK_HOME": "/from/env"}).options
    assert env.undercloud.home == "/from/env"
    assert not hasattr(env.deploy, "stack_home")
