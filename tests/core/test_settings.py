"""Settings files: bundled scenarios load, bad input gets one message per problem, all at once."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from apex_tools.core.config import settings_path
from apex_tools.core.errors import SettingsError
from apex_tools.core.resources import data_path
from apex_tools.core.settings import load_deploy_settings, load_network_settings, load_patches_file, merged_patches

NOVA = "Id68aa27a8ab08d9c00655e5ed6b48d194aa8e6f6"
THT = "Ie380cc41ca50a294a2647d673f339d02111bf6b3"
COMMON = "I2e0a40d7902f592e4b7bd727f57048111e0bea36"

GOOD_NETWORK = {
    "networks": {
        "admin": {
            "installer_vm": {"ip": "192.0.2.1"},
            "cidr": "192.0.2.0/24",
            "dhcp_range": ["192.0.2.2", "192.0.2.19"],
            "introspection_range": ["192.0.2.100", "192.0.2.120"],
        }
    }
}


def write(tmp_path: Path, data: object, name: str = "settings.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("scenario", sorted(p.stem for p in data_path("config", "deploy").glob("*.yaml")))
def test_bundled_scenarios_load(scenario):
    ds = load_deploy_settings(settings_path(scenario, "deploy"))
    assert ds.deploy_options.os_version


def test_bundled_network_and_patches_load():
    ns = load_network_settings(settings_path("network_settings", "network"))
    assert str(ns.admin.installer_vm.ip) == "192.0.2.1"
    patches = load_patches_file(settings_path("common-patches", ""))
    assert patches.for_version("master").undercloud[0].change_id == COMMON


def test_unset_ceph_device_is_none_and_distinct_from_loop3(tmp_path):
    unset = load_deploy_settings(write(tmp_path, {"global_params": {"ha_enabled": False}}, "a.yaml"))
    loop3 = load_deploy_settings(
        write(tmp_path, {"global_params": {"ha_enabled": False}, "deploy_options": {"ceph_device": "/dev/loop3"}}, "b.yaml")
    )
    assert unset.deploy_options.ceph_device is None
    assert loop3.deploy_options.ceph_device == "/dev/loop3"


def test_defaults_of_deploy_options(tmp_path):
    opts = load_deploy_settings(write(tmp_path, {"global_params": {"ha_enabled": True}})).deploy_options
    assert (opts.containers, opts.os_version, opts.sdn_controller, opts.odl_version) == (True, "master", False, "oxygen")
    assert (opts.ceph, opts.dataplane, opts.vim) == (True, "ovs", "openstack")


def test_patches_merge_keeps_order_and_drops_duplicates(tmp_path):
    ds = load_deploy_settings(write(tmp_path, {
        "global_params": {"ha_enabled": False, "patches": {"undercloud": [
            {"change-id": THT, "project": "openstack/tripleo-heat-templates"},
            {"change-id": COMMON, "project": "openstack/tripleo-common"},
        ]}},
    }))
    common = load_patches_file(write(tmp_path, {"patches": {"master": {"undercloud": [
        {"change-id": COMMON, "project": "openstack/tripleo-common"},
        {"change-id": NOVA, "project": "openstack/nova"},
    ]}}}, "common.yaml"))
    merged = merged_patches(ds, common)
    assert [p.change_id for p in merged.undercloud] == [THT, COMMON, NOVA]
    assert merged.overcloud == ()


BAD_DEPLOY = [
    ("missing-ha", {"global_params": {}}, ["global_params.ha_enabled: required key is missing"]),
    ("unknown-top-key", {"global_params": {"ha_enabled": False}, "deploy_option": {}},
     ["deploy_option: unknown key (allowed: deploy_options, global_params)"]),
    ("unknown-option", {"global_params": {"ha_enabled": False}, "deploy_options": {"sdn": "odl"}},
     ["deploy_options.sdn: unknown key (allowed:", "sdn_controller"]),
    ("bad-os-version", {"global_params": {"ha_enabled": False}, "deploy_options": {"os_version": "pike"}},
     ["deploy_options.os_version: 'pike':", "'queens'", "'master'"]),
    ("bad-dataplane", {"global_params": {"ha_enabled": False}, "deploy_options": {"dataplane": "dpdk"}},
     ["deploy_options.dataplane: 'dpdk':", "'ovs', 'ovs_dpdk' or 'fdio'"]),
    ("bad-sdn", {"global_params": {"ha_enabled": False}, "deploy_options": {"sdn_controller": "onos"}},
     ["deploy_options.sdn_controller: 'onos':", "'opendaylight'", "'ovn'"]),
    ("bad-odl-version", {"global_params": {"ha_enabled": False},
                         "deploy_options": {"sdn_controller": "opendaylight", "odl_version": "boron"}},
     ["deploy_options.odl_version: 'boron':", "'oxygen'"]),
    ("ceph-device-not-dev", {"global_params": {"ha_enabled": False}, "deploy_options": {"ceph_device": "sdb"}},
     ["deploy_options.ceph_device: 'sdb':", "^/dev/"]),
    ("bad-change-id", {"global_params": {"ha_enabled": False,
                                         "patches": {"overcloud": [{"change-id": "12345", "project": "openstack/nova"}]}}},
     ["global_params.patches.overcloud.0.change-id: '12345': a Gerrit Change-Id is 'I' followed by 40"]),
    ("patch-missing-project", {"global_params": {"ha_enabled": False,
                                                 "patches": {"undercloud": [{"change-id": NOVA}]}}},
     ["global_params.patches.undercloud.0.project: required key is missing"]),
    ("patch-unknown-key", {"global_params": {"ha_enabled": False,
                                             "patches": {"undercloud": [{"change-id": NOVA, "project": "x", "brnch": "m"}]}}},
     ["global_params.patches.undercloud.0.brnch: unknown key (allowed: branch, change-id, project)"]),
    ("ha-not-bool", {"global_params": {"ha_enabled": "sometimes"}},
     ["global_params.ha_enabled: 'sometimes': Input should be a valid boolean"]),
    ("sriov-true", {"global_params": {"ha_enabled": False}, "deploy_options": {"sriov": True}},
     ["deploy_options.sriov: True: sriov takes a NIC name"]),
    ("gluon-without-vpn", {"global_params": {"ha_enabled": False}, "deploy_options": {"gluon": True}},
     ["deploy_options.gluon: True: gluon requires deploy_options.vpn: true"]),
    ("odl-version-without-odl", {"global_params": {"ha_enabled": False}, "deploy_options": {"odl_version": "neon"}},
     ["deploy_options.odl_version: 'neon': only used with sdn_controller: opendaylight"]),
    ("top-level-list", "- a\n- b\n", ["(top level): ['a', 'b']: expected a mapping"]),
    ("broken-yaml", "global_params: {ha_enabled: [\n", ["line 2", "not valid YAML"]),
]


@pytest.mark.parametrize("data,expected", [(d, e) for _, d, e in BAD_DEPLOY], ids=[i for i, _, _ in BAD_DEPLOY])
def test_bad_deploy_settings_name_file_key_value_and_allowed(tmp_path, data, expected):
    path = write(tmp_path, data)
    with pytest.raises(SettingsError) as err:
        load_deploy_settings(path)
    message = str(err.value)
    assert str(path) in message
    for fragment in expected:
        assert fragment in message, message


def test_every_problem_is_reported_at_once(tmp_path):
    path = write(tmp_path, {
        "global_params": {"ha_enabled": "x", "foo": 1},
        "deploy_options": {"dataplane": "dpdk", "vim": "vmware", "ceph_device": "sdb"},
    })
    with pytest.raises(SettingsError) as err:
        load_deploy_settings(path)
    message = str(err.value)
    assert "5 problems" in message
    for key in ("global_params.ha_enabled", "global_params.foo", "deploy_options.dataplane",
                "deploy_options.vim", "deploy_options.ceph_device"):
        assert key in message


def test_missing_file_is_named(tmp_path):
    with pytest.raises(SettingsError, match=r"deploy settings .*/nope.yaml: no such file"):
        load_deploy_settings(tmp_path / "nope.yaml")


def _admin(**changes):
    data = yaml.safe_load(yaml.safe_dump(GOOD_NETWORK))
    data["networks"]["admin"].update(changes)
    return data


BAD_NETWORK = [
    ("installer-ip-outside-cidr", _admin(installer_vm={"ip": "10.0.0.1"}),
     ["networks.admin.installer_vm.ip: '10.0.0.1': not inside networks.admin.cidr 192.0.2.0/24"]),
    ("bad-cidr", _admin(cidr="192.0.2.0/33"), ["networks.admin.cidr: '192.0.2.0/33':"]),
    ("dhcp-reversed", _admin(dhcp_range=["192.0.2.19", "192.0.2.2"]),
     ["networks.admin.dhcp_range: ['192.0.2.19', '192.0.2.2']: start is after end"]),
    ("ranges-overlap", _admin(introspection_range=["192.0.2.10", "192.0.2.30"]),
     ["networks.admin.introspection_range: ['192.0.2.10', '192.0.2.30']: overlaps dhcp_range"]),
    ("dhcp-contains-installer", _admin(dhcp_range=["192.0.2.1", "192.0.2.19"]),
     ["contains installer_vm.ip 192.0.2.1"]),
    ("unknown-network", {**GOOD_NETWORK, "networks": {**GOOD_NETWORK["networks"], "admn": {}}},
     ["networks.admn: unknown key (allowed: admin, api, external, storage, tenant)"]),
    ("no-admin", {"networks": {}}, ["networks.admin: required key is missing"]),
]


@pytest.mark.parametrize("data,expected", [(d, e) for _, d, e in BAD_NETWORK], ids=[i for i, _, _ in BAD_NETWORK])
def test_bad_network_settings(tmp_path, data, expected):
    path = write(tmp_path, data)
    with pytest.raises(SettingsError) as err:
        load_network_settings(path)
    for fragment in [str(path), *expected]:
        assert fragment in str(err.value), str(err.value)


def test_dns_domain_alias_of_apex_files(tmp_path):
    ns = load_network_settings(write(tmp_path, {**GOOD_NETWORK, "dns-domain": "example.org"}))
    assert ns.domain_name == "example.org"


def test_bad_patches_file_names_version(tmp_path):
    path = write(tmp_path, {"patches": {"pike": {"undercloud": []}}})
    with pytest.raises(SettingsError) as err:
        load_patches_file(path)
    assert "patches.pike" in str(err.value) and "'master'" in str(err.value)


def test_a_list_key_with_no_value_is_empty(tmp_path):
    path = tmp_path / "ds.yaml"
    path.write_text("global_params:\n  ha_enabled: false\n  patches:\n    overcloud:\n    undercloud:\n")
    ds = load_deploy_settings(path)
    assert ds.global_params.patches.overcloud == () and ds.global_params.patches.undercloud == ()
    path.write_text("global_params:\n  ha_enabled: false\n  patches:\n")
    assert load_deploy_settings(path).global_params.patches.overcloud == ()


def test_a_wrong_type_is_named_in_words_a_user_knows(tmp_path):
    path = write(tmp_path, {"global_params": {"ha_enabled": False, "patches": {"overcloud": "I" + "a" * 40}}})
    with pytest.raises(SettingsError) as err:
        load_deploy_settings(path)
    message = str(err.value)
    assert f"{path}: global_params.patches.overcloud: 'I{'a' * 40}': expected a list of patches" in message
    assert "tuple" not in message
    path = write(tmp_path, {"global_params": {"ha_enabled": False, "patches": ["x"]}})
    with pytest.raises(SettingsError, match="global_params.patches: \\['x'\\]: expected a mapping"):
        load_deploy_settings(path)


def test_a_patches_file_version_with_no_value_has_no_patches(tmp_path):
    path = tmp_path / "common-patches.yaml"
    path.write_text("patches:\n  queens:\n  rocky:\n    overcloud:\n")
    loaded = load_patches_file(path)
    assert loaded.for_version("queens").overcloud == () and loaded.for_version("rocky").undercloud == ()
