"""SLSA v1 statements validated against the in-toto attestation bindings (Statement v1 and the SLSA
Provenance v1 message, parsed strictly), their DSSE envelopes checked with the public key alone,
the referrers-tag attachment in a real registry, and ``apex report``'s table."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from apex_tools.core.reference import ImageRef
from apex_tools.registry.client import DOCKER_MANIFEST, OCI_INDEX, RegistryClient
from apex_tools.trust.keys import ensure_key
from apex_tools.trust.provenance import (
    IN_TOTO_JSON,
    attach,
    load_provenance,
    pae,
    patch_dependency,
    statement,
    update_provenance,
    write_statement,
)
from apex_tools.trust.report import report_lines
from apex_tools.trust.sigstore import attachment_tag

from registry_support import layer_blob, push_image
from trust_support import validate_slsa

CHANGE = "I" + "0123456789" * 4
COMMIT = "a" * 40


def _statement(digest: str = "sha256:" + "1" * 64) -> dict[str, Any]:
    patch = {"project": "openstack/nova", "change_id": CHANGE, "revision": COMMIT, "patch_set": 7, "commit": COMMIT,
             "file": "01-nova.patch", "target_dir": "/usr/lib/python3.9/site-packages"}
    return statement("127.0.0.1:8787/tripleomaster/centos-binary-nova-api", digest,
                     "127.0.0.1:8787/tripleomaster/centos-binary-nova-api:current-tripleo", "sha256:" + "2" * 64,
                     [patch_dependency(patch, "3" * 64, "https://review.opendev.org"),
                      patch_dependency({"change_id": "/srv/local.patch", "file": "02-local.patch"}, "4" * 64, "")],
                     {"deploy_settings": "os-nosdn-nofeature-noha", "os_version": "master"})


def test_statement_is_slsa_v1_in_an_in_toto_statement() -> None:
    data = _statement()
    validate_slsa(data)
    deps = data["predicate"]["buildDefinition"]["resolvedDependencies"]
    assert deps[0] == {"uri": "docker://127.0.0.1:8787/tripleomaster/centos-binary-nova-api:current-tripleo",
                       "name": "base", "digest": {"sha256": "2" * 64}}
    assert deps[1]["uri"] == f"https://review.opendev.org/q/{CHANGE}"
    assert deps[1]["digest"] == {"sha256": "3" * 64, "gitCommit": COMMIT}
    assert deps[1]["annotations"] == {"project": "openstack/nova", "change_id": CHANGE, "patch_set": 7,
                                      "revision": COMMIT, "commit": COMMIT,
                                      "target_dir": "/usr/lib/python3.9/site-packages"}
    assert deps[2]["uri"] == "file:///srv/local.patch" and deps[2]["digest"] == {"sha256": "4" * 64}
    assert data["subject"] == [{"name": "127.0.0.1:8787/tripleomaster/centos-binary-nova-api",
                                "digest": {"sha256": "1" * 64}}]


def test_a_broken_statement_is_refused_by_the_schema() -> None:
    data = _statement()
    data["predicate"]["buildDefinition"]["resolvedDependency"] = []  # a misspelt field
    with pytest.raises(Exception):
        validate_slsa(data)
    data = _statement()
    data["subject"] = []
    with pytest.raises(ValueError):
        validate_slsa(data)


def test_envelope_verifies_with_the_public_key_alone(tmp_path: Path) -> None:
    key, _ = ensure_key(tmp_path)
    raw = write_statement(tmp_path, "nova-api", _statement(), key)
    env = json.loads(raw)
    body = base64.b64decode(env["payload"])
    public = load_pem_public_key((tmp_path / "signing" / "signing.pub").read_bytes())
    public.verify(base64.b64decode(env["signatures"][0]["sig"]), pae(IN_TOTO_JSON, body))  # raises if bad
    assert json.loads(body) == json.loads((tmp_path / "provenance" / "nova-api.intoto.json").read_text())
    assert write_statement(tmp_path, "nova-api", _statement(), key) == raw  # same inputs, same bytes


def test_attached_by_the_referrers_tag_and_apex_stays_one_manifest(registry, tmp_path: Path) -> None:
    client = RegistryClient(registry.address, tls="http")
    repo = "tripleomaster/centos-binary-nova-api"
    image = push_image(client, repo, "apex", [layer_blob("code", 1000)])
    key, _ = ensure_key(tmp_path)
    raw = write_statement(tmp_path, "nova-api", _statement(image.digest), key)
    assert attach(client, repo, image, raw)
    assert not attach(client, repo, image, raw)  # already there: nothing written
    index = client.get_manifest(repo, attachment_tag(image.digest, ""))
    assert index.media_type == OCI_INDEX
    [entry] = index.json()["manifests"]
    assert entry["artifactType"] == IN_TOTO_JSON
    referrer = client.get_manifest(repo, entry["digest"]).json()
    assert referrer["subject"]["digest"] == image.digest
    assert client.get_blob(repo, referrer["layers"][0]["digest"]) == raw
    assert client.head_manifest(repo, "apex") == (image.digest, DOCKER_MANIFEST)
    # A changed statement replaces our referrer in the index rather than piling up.
    assert attach(client, repo, image, write_statement(tmp_path, "nova-api", _statement(image.digest) | {
        "predicateType": "https://slsa.dev/provenance/v1"}, None))
    assert len(client.get_manifest(repo, attachment_tag(image.digest, "")).json()["manifests"]) == 1


def test_report_fits_80_columns_and_names_sources_digests_and_patches(tmp_path: Path) -> None:
    update_provenance(tmp_path, "images", [{
        "name": "nova-api", "parameters": ["ContainerNovaApiImage"],
        "upstream": {"ref": "127.0.0.1:8782/tripleomaster/centos-binary-nova-api:current-tripleo",
                     "digest": "sha256:" + "2" * 64},
        "local": {"ref": "127.0.0.1:8787/tripleomaster/centos-binary-nova-api:apex", "digest": "sha256:" + "1" * 64},
        "signature": {"key_id": "sha256:" + "9" * 64, "tag": "x"},
        "rebuild": {"base": {"ref": "b", "digest": "sha256:" + "2" * 64}, "builder": "docker",
                    "patches": [{"project": "openstack/nova", "change_id": CHANGE, "revision": COMMIT,
                                 "patch_set": 7, "commit": COMMIT, "sha256": "sha256:" + "3" * 64}]},
    }])
    update_provenance(tmp_path, "disk_images", {"overcloud": {
        "upstream": {"file": "overcloud-full.tar", "checksums": {"md5": "6" * 32}},
        "customized": {"file": "overcloud-full.qcow2", "sha256": "7" * 64},
        "patches": [{"project": "openstack/puppet-tripleo", "change_id": "I" + "8" * 40, "revision": "b" * 40,
                     "patch_set": 12, "commit": "b" * 40, "sha256": "9" * 64},
                    {"project": "openstack/puppet-tripleo", "change_id": "/srv/patches/osd.patch",
                     "revision": "sha256:aaaa", "sha256": "a" * 64}],
        "changes": ["1 disk-image patch(es)"]}})
    update_provenance(tmp_path, "deploy", {"command": "deploy_command", "sha256": "5" * 64})
    lines = report_lines(load_provenance(tmp_path))
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    text = "\n".join(lines)
    assert "nova-api" in text and "sha256:111111111111" in text and "sha256:222222222222" in text
    assert f"  patch openstack/nova {CHANGE}\n    patch set 7, commit aaaaaaaaaaaa, sha256:333333333333" in text
    assert (f"  patch openstack/puppet-tripleo I{'8' * 40}\n    patch set 12, commit bbbbbbbbbbbb, "
            "sha256:999999999999") in text
    assert "  patch openstack/puppet-tripleo /srv/patches/osd.patch\n    local file, sha256:aaaaaaaaaaaa" in text
    assert "from 127.0.0.1:8782/tripleomaster/centos-binary-nova-api:current-tripleo" in text
    assert "1 images, 1 signed, 1 rebuilt" in text
