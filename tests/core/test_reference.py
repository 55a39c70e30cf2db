"""Image references parse once into a type and print back canonically."""

import pytest

from apex_tools.core.errors import SettingsError
from apex_tools.core.reference import ImageRef

DIGEST = "sha256:" + "ab" * 32

CASES = [
    ("docker.io/tripleomaster/centos-binary-nova-api:current-tripleo",
     ("docker.io", "tripleomaster/centos-binary-nova-api", "current-tripleo", None)),
    ("192.0.2.1:8787/tripleomaster/centos-binary-nova-api:apex",
     ("192.0.2.1:8787", "tripleomaster/centos-binary-nova-api", "apex", None)),
    ("busybox", ("docker.io", "library/busybox", None, None)),
    ("ceph/daemon:v4.0", ("docker.io", "ceph/daemon", "v4.0", None)),
    (f"localhost/x@{DIGEST}", ("localhost", "x", None, DIGEST)),
    (f"[::1]:5000/a/b:t@{DIGEST}", ("[::1]:5000", "a/b", "t", DIGEST)),
]


@pytest.mark.parametrize("text,parts", CASES, ids=[c[0][:40] for c in CASES])
def test_parse_and_round_trip(text, parts):
    ref = ImageRef.parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == parts
    assert ImageRef.parse(str(ref)) == ref


def test_with_helpers_and_reference():
    ref = ImageRef.parse("docker.io/tripleomaster/centos-binary-nova-api:current-tripleo")
    local = ref.with_registry("127.0.0.1:5000").with_tag("apex")
    assert str(local) == "127.0.0.1:5000/tripleomaster/centos-binary-nova-api:apex"
    assert local.with_digest(DIGEST).reference == DIGEST
    assert ImageRef.parse("busybox").reference == "latest"


@pytest.mark.parametrize("text", ["Upper/Case:tag", "a/b:bad tag", "a/b@sha256:short", "a//b"],
                         ids=["uppercase", "space-in-tag", "short-digest", "empty-component"])
def test_invalid_references_are_rejected_with_the_reason(text):
    with pytest.raises(SettingsError, match="image reference"):
        ImageRef.parse(text)
