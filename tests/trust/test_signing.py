"""Signatures a real registry stores and Debian's skopeo checks (see trust_support for what its
build leaves to the key): accepted when ours, refused when the tag was re-pointed, unsigned, or
signed by another key; re-signing writes nothing; a new key re-signs."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from apex_tools.core.reference import ImageRef
from apex_tools.registry.client import RegistryClient
from apex_tools.trust.keys import SigningError, ensure_key, key_id_of, public_key_path, seen_public_pem
from apex_tools.trust.policy import write_policy
from apex_tools.trust.sigstore import ALREADY_SIGNED, SIGNED, attachment_tag, sign_image

from registry_support import layer_blob, push_image
from trust_support import UNSIGNED, accepted, skopeo_verdict

REPO = "tripleomaster/centos-binary-nova-api"


@pytest.fixture
def signed_setup(registry, tmp_path: Path):
    """A registry holding one image, a work dir with a generated key and the policy for it."""
    client = RegistryClient(registry.address, tls="http")
    manifest = push_image(client, REPO, "apex", [layer_blob("code", 2000)])
    work = tmp_path / "work"
    key, generated = ensure_key(work)
    assert generated
    write_policy(work, registry.address)
    return client, manifest, work, key


def test_key_is_generated_once_private_and_its_public_half_beside(tmp_path: Path) -> None:
    key, generated = ensure_key(tmp_path)
    again, generated_again = ensure_key(tmp_path)
    assert generated and not generated_again and key.key_id == again.key_id
    private = tmp_path / "signing" / "signing.key"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "signing").stat().st_mode) == 0o700
    assert public_key_path(tmp_path).read_bytes() == key.public_pem
    assert b"PRIVATE" not in key.public_pem and "private" not in repr(key).lower().replace("privatekey", "")


def test_key_id_is_remembered_by_the_key_files_bytes_and_a_changed_key_is_parsed_again(tmp_path: Path) -> None:
    key, _ = ensure_key(tmp_path)
    private = tmp_path / "signing" / "signing.key"
    assert (tmp_path / "signing" / "key-id").read_text().split()[1] == key.key_id
    assert key_id_of(tmp_path) == key.key_id
    # Another key in the same file: the remembered id no longer applies.
    private.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    other = key_id_of(tmp_path)
    assert other is not None and other != key.key_id
    assert other == ensure_key(tmp_path)[0].key_id
    # The mode is checked even when the id is remembered.
    os.chmod(private, 0o644)
    with pytest.raises(SigningError, match="readable by others"):
        key_id_of(tmp_path)


def test_public_half_is_known_without_the_key_only_while_key_id_vouches_for_both_files(tmp_path: Path) -> None:
    assert seen_public_pem(tmp_path) is None  # no key yet
    key, _ = ensure_key(tmp_path)
    assert seen_public_pem(tmp_path) == key.public_pem
    # signing.pub replaced by another key's public half: not the recorded id, so not trusted.
    other = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    public_key_path(tmp_path).write_bytes(other)
    assert seen_public_pem(tmp_path) is None
    public_key_path(tmp_path).write_bytes(b"-----BEGIN PUBLIC KEY-----\n!!not base64!!\n-----END PUBLIC KEY-----\n")
    assert seen_public_pem(tmp_path) is None
    assert ensure_key(tmp_path)[0].public_pem == key.public_pem and seen_public_pem(tmp_path) == key.public_pem
    # Another private key in the file: the record no longer applies.
    (tmp_path / "signing" / "signing.key").write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    assert seen_public_pem(tmp_path) is None


def test_given_key_must_be_private_to_its_owner(tmp_path: Path) -> None:
    path = tmp_path / "cosign.key"
    path.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    os.chmod(path, 0o644)
    with pytest.raises(SigningError, match="readable by others"):
        ensure_key(tmp_path / "work", str(path))
    os.chmod(path, 0o600)
    path.with_name("junk.key").write_text("not a key")
    os.chmod(path.with_name("junk.key"), 0o600)
    with pytest.raises(SigningError, match="not a usable PEM private key"):
        ensure_key(tmp_path / "work", str(path.with_name("junk.key")))


def test_skopeo_accepts_our_signature_and_a_resign_writes_nothing(signed_setup) -> None:
    client, manifest, work, key = signed_setup
    ref = ImageRef(client.host, REPO, "apex")
    assert skopeo_verdict(work, str(ref)).status == UNSIGNED
    signed = sign_image(client, ref, manifest.digest, key)
    assert signed.status == SIGNED
    assert signed.signature == client.head_manifest(REPO, attachment_tag(manifest.digest))[0]
    verdict = skopeo_verdict(work, str(ref))
    assert verdict.status != UNSIGNED and len(verdict.fetched) == 1, verdict.output  # skopeo found our layer
    ok, out = accepted(work, client, str(ref), REPO, manifest.digest)
    assert ok, out
    ok, out = accepted(work, client, f"{client.host}/{REPO}@{manifest.digest}", REPO, manifest.digest)
    assert ok, out
    sig = client.head_manifest(REPO, attachment_tag(manifest.digest))
    again = sign_image(client, ref, manifest.digest, key)
    assert again.status == ALREADY_SIGNED and sig is not None and again.signature == sig[0]
    assert client.head_manifest(REPO, attachment_tag(manifest.digest)) == sig  # not rewritten
    assert sign_image(client, ref, manifest.digest, key).status == ALREADY_SIGNED


def test_skopeo_refuses_an_image_pushed_over_the_tag(signed_setup) -> None:
    client, manifest, work, key = signed_setup
    ref = ImageRef(client.host, REPO, "apex")
    sign_image(client, ref, manifest.digest, key)
    tampered = push_image(client, REPO, "apex", [layer_blob("tampered", 2000)])
    assert skopeo_verdict(work, str(ref)).status == UNSIGNED
    # Even with our signature copied over to the new digest's tag, the payload names the old digest.
    client.put_manifest(REPO, attachment_tag(tampered.digest),
                        client.get_manifest(REPO, attachment_tag(manifest.digest)))
    ok, out = accepted(work, client, str(ref), REPO, tampered.digest)
    assert not ok, out


def test_skopeo_refuses_another_keys_signature_and_a_new_key_resigns(signed_setup, tmp_path: Path) -> None:
    client, manifest, work, key = signed_setup
    ref = ImageRef(client.host, REPO, "apex")
    other, _ = ensure_key(tmp_path / "other")
    assert sign_image(client, ref, manifest.digest, other).status == SIGNED
    ok, out = accepted(work, client, str(ref), REPO, manifest.digest)
    assert not ok, out
    # The deployment's key replaces the other key's signature of the same payload.
    assert sign_image(client, ref, manifest.digest, key).status == SIGNED
    ok, out = accepted(work, client, str(ref), REPO, manifest.digest)
    assert ok, out
    layers = client.get_manifest(REPO, attachment_tag(manifest.digest)).json()["layers"]
    assert len(layers) == 1


@pytest.mark.parametrize("make", [lambda: ec.generate_private_key(ec.SECP256R1()),
                                  lambda: rsa.generate_private_key(65537, 2048)], ids=["ecdsa-p256", "rsa"])
def test_a_given_key_of_each_kind_signs_what_skopeo_accepts(registry, tmp_path: Path, make) -> None:
    client = RegistryClient(registry.address, tls="http")
    manifest = push_image(client, REPO, "current-tripleo", [layer_blob("code", 2000)])
    path = tmp_path / "given.key"
    path.write_bytes(make().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    os.chmod(path, 0o600)
    work = tmp_path / "work"
    key, generated = ensure_key(work, str(path))
    assert not generated and not (work / "signing" / "signing.key").exists()
    write_policy(work, registry.address)
    ref = ImageRef(client.host, REPO, "current-tripleo")
    assert sign_image(client, ref, manifest.digest, key).status == SIGNED
    ok, out = accepted(work, client, str(ref), REPO, manifest.digest)
    assert ok, out
    assert sign_image(client, ref, manifest.digest, key).status == ALREADY_SIGNED
