"""Configuration layering (defaults < files < APEX_* < flags), provenance and errors."""

from __future__ import annotations

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
