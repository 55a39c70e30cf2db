"""The readers of TripleO's sources on small trees in TripleO's own formats (no network)."""

from __future__ import annotations

from pathlib import Path

import pytest

from apex_tools.catalog import tripleo
from apex_tools.catalog.tht import heat_templates_from_dir
from apex_tools.core.errors import SettingsError

TEMPLATE = """container_images_template:

- imagename: "{{namespace}}/{{name_prefix}}mariadb{{name_suffix}}:{{tag}}"
  params:
  - ContainerMysqlImage
  - ContainerClustercheckImage
  services:
  - OS::TripleO::Services::MySQL

- imagename: "{{namespace}}/{{name_prefix}}ovn-base{{name_suffix}}:{{tag}}"

{% if neutron_driver == "odl" %}
- imagename: "{{namespace}}/{{name_prefix}}opendaylight{{name_suffix}}:{{tag}}"
  params:
  - ContainerOpendaylightApiImage
  services:
  - OS::TripleO::Services::OpenDaylightApi
{% elif neutron_driver == "ovn" %}
- imagename: "{{namespace}}/{{name_prefix}}neutron-server-ovn{{name_suffix}}:{{tag}}"
  params:
  - ContainerNeutronApiImage
  services:
  - OS::TripleO::Services::NeutronApi
{% else %}
- imagename: "{{namespace}}/{{name_prefix}}neutron-server{{name_suffix}}:{{tag}}"
  params:
  - ContainerNeutronApiImage
  services:
  - OS::TripleO::Services::NeutronApi
{% endif %}
{% include 'ceph.j2' %}
{% if namespace_stein is defined %}
- imagename: "{{namespace_stein}}/{{name_prefix_stein}}keystone{{name_suffix_stein}}:{{tag_stein}}"
  params:
  - ContainerKeystoneImage
  services:
  - OS::TripleO::Services::Keystone
{% endif %}
"""
CEPH = """- imagename: "{{ceph_namespace}}/{{ceph_image}}:{{ceph_tag}}"
  image_source: ceph
  params:
  - ContainerCephDaemonImage
  services:
  - OS::TripleO::Services::CephMon
"""


def test_container_images_per_neutron_driver_and_ceph(tmp_path):
    (tmp_path / "ceph.j2").write_text(CEPH)
    data = tripleo.container_images(TEMPLATE, "t", tmp_path)
    images = data["images"]
    assert images["mariadb"] == {"parameters": ["ContainerClustercheckImage", "ContainerMysqlImage"],
                                 "services": ["MySQL"]}
    assert images["opendaylight"]["neutron_driver"] == ["odl"]
    assert images["neutron-server-ovn"]["neutron_driver"] == ["ovn"]
    assert images["neutron-server"]["neutron_driver"] == ["other"]
    assert "ovn-base" not in images and "keystone" not in images  # no params; undefined namespace_stein
    assert data["ceph_images"] == {"ceph": {"parameters": ["ContainerCephDaemonImage"], "services": ["CephMon"]}}


def test_ceph_defaults_from_the_yaml_and_from_queens_code():
    text = ("parameter_defaults:\n  ContainerImagePrepare:\n  - set:\n      namespace: docker.io/tripleotrain\n"
            "      ceph_namespace: docker.io/ceph\n      ceph_image: daemon\n      ceph_tag: v4.0.0-x\n")
    assert tripleo.ceph_defaults_from_yaml(text) == {"namespace": "docker.io/ceph", "image": "daemon", "tag": "v4.0.0-x"}
    code = "DEFAULTS = {\n    'ceph_namespace': 'docker.io/ceph',\n    'ceph_image': 'daemon',\n    'ceph_tag': 'v3',\n}\n"
    assert tripleo.ceph_defaults_from_code(code)["tag"] == "v3"
    with pytest.raises(SettingsError, match="no ceph_tag"):
        tripleo.ceph_defaults_from_code("'ceph_namespace': 'a', 'ceph_image': 'b'")


def test_declared_parameters_of_yaml_and_jinja_templates():
    text = ("heat_template_version: rocky\nparameters:\n  ContainerNovaApiImage:\n    type: string\n"
            "  {{role.name}}Count:\n    type: number\n  EndpointMap:\n    default: {}\n"
            "resources:\n  NotAParameter:\n    type: OS::Heat::None\n")
    assert tripleo.declared_parameters(text) == {"ContainerNovaApiImage", "EndpointMap"}


def write_tht(root: Path) -> Path:
    files = {
        "roles_data.yaml": "- name: Controller\n  ServicesDefault:\n    - OS::TripleO::Services::MySQL\n"
                           "    - OS::TripleO::Services::OpenDaylightApi\n"
                           "- name: Compute\n  ServicesDefault:\n    - OS::TripleO::Services::NovaCompute\n",
        tripleo.DEFAULT_REGISTRY: "resource_registry:\n{% for role in roles %}\n"
                                  "  OS::TripleO::Services::{{role.name}}X: OS::Heat::None\n{% endfor %}\n"
                                  "  OS::TripleO::Services::MySQL: deployment/mysql.yaml\n"
                                  "  OS::TripleO::Services::OpenDaylightApi: OS::Heat::None\n",
        "deployment/mysql.yaml": "heat_template_version: rocky\nparameters:\n  ContainerMysqlImage:\n    type: string\n",
        "environments/docker-ha.yaml": "resource_registry:\n  OS::TripleO::Services::MySQL: ../x.yaml\n"
                                       "  OS::TripleO::Tasks::ControllerPreConfig: OS::Heat::None\n",
        "environments/services/neutron-opendaylight.yaml":
            "resource_registry:\n  OS::TripleO::Services::OpenDaylightApi: ../../odl.yaml\n",
        "environments/ssl/tls.j2.yaml": "parameter_defaults: {}\n",
        "ci/environments/scenario001.yaml": "heat_template_version: rocky\nparameters:\n  CiOnly:\n    type: string\n",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_heat_templates_from_an_installed_tree(tmp_path):
    heat = heat_templates_from_dir(write_tht(tmp_path), "stein")
    assert heat.release == "stein"
    assert heat.parameters == frozenset({"ContainerMysqlImage"})  # CI templates are not THT's
    assert heat.has_environment("environments/docker-ha.yaml")
    assert heat.has_environment("environments/ssl/tls.yaml") and heat.has_environment("environments/ssl/tls.j2.yaml")
    assert not heat.has_environment("environments/docker.yaml")
    assert heat.roles == {"Controller": ("MySQL", "OpenDaylightApi"), "Compute": ("NovaCompute",)}
    assert heat.resource_registry == {"MySQL": "deployment/mysql.yaml", "OpenDaylightApi": "OS::Heat::None"}
    assert heat.scenario_environments == {
        "environments/docker-ha.yaml": {"MySQL": "../x.yaml"},
        "environments/services/neutron-opendaylight.yaml": {"OpenDaylightApi": "../../odl.yaml"},
    }


def test_a_tree_without_roles_is_refused(tmp_path):
    with pytest.raises(SettingsError, match="no roles_data.yaml"):
        heat_templates_from_dir(tmp_path, "train")
