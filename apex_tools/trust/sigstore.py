"""Sigstore (cosign-format) signatures, stored as containers/image stores them, so Debian's
skopeo and podman verify them (``policy.json`` ``sigstoreSigned`` + ``use-sigstore-attachments``).

One signature is a "simple signing" payload naming the image (``docker-reference``, the name
the nodes pull) and its manifest digest, signed by the key; it is a layer, with the signature
in its ``dev.cosignproject.cosign/signature`` annotation, of an OCI manifest tagged
``sha256-<hex>.sig`` in the image's repository (one layer per signed name). Signing what is
already signed by this key changes nothing; a layer of the same payload signed by another key
is replaced.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

from apex_tools.core.reference import ImageRef
from apex_tools.registry.client import OCI_MANIFEST, Manifest, RegistryClient, sha256_digest
from apex_tools.trust.keys import SigningKey

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
SIGNED = "signed"
ALREADY_SIGNED = "already signed"


def attachment_tag(digest: str, suffix: str = "sig") -> str:
    """The tag of a digest's attachment: ``sha256-<hex>.sig`` (cosign's and containers/image's)."""
    return digest.replace(":", "-") + (f".{suffix}" if suffix else "")


def payload(identity: str, digest: str) -> bytes:
    """The simple-signing payload containers/image checks (``optional`` null, as cosign writes it)."""
    return json.dumps({
        "critical": {
            "identity": {"docker-reference": identity},
            "image": {"docker-manifest-digest": digest},
            "type": "cosign container image signature",
        },
        "optional": None,
    }, sort_keys=True, separators=(",", ":")).encode()


def _json(data: object) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Signed:
    """How one image's signing ended: its name, digest and status (signed / already signed), and
    the digest of the signature manifest now tagged beside it."""

    identity: str
    digest: str
    status: str
    signature: str = ""


def _ours(layer: dict[str, object], body: bytes, key: SigningKey) -> bool:
    """True when ``layer`` is ``body`` signed by ``key``."""
    if layer.get("digest") != sha256_digest(body):
        return False
    annotations = layer.get("annotations")
    encoded = annotations.get(SIGNATURE_ANNOTATION, "") if isinstance(annotations, dict) else ""
    try:
        signature = base64.b64decode(str(encoded), validate=True)
    except (binascii.Error, ValueError):
        return False
    return key.verifies(body, signature)


def sign_image(client: RegistryClient, ref: ImageRef, digest: str, key: SigningKey) -> Signed:
    """Sign ``digest`` under the name ``ref`` (as the nodes pull it) in ``client``'s registry.

    ``client`` reaches the registry (possibly through a forward); ``ref`` is the name signed.
    The existing attachment is read first: when it holds this payload signed by this key,
    nothing is written.
    """
    identity = str(ref)
    body = payload(identity, digest)
    repository, tag = ref.repository, attachment_tag(digest)
    layers: list[dict[str, object]] = []
    if client.head_manifest(repository, tag) is not None:
        existing = client.get_manifest(repository, tag)
        layers = list(existing.json().get("layers") or [])
        if any(_ours(layer, body, key) for layer in layers):
            return Signed(identity, digest, ALREADY_SIGNED, existing.digest)
        # The same payload signed by another (an old) key is replaced; other names' layers stay.
        layers = [layer for layer in layers if layer.get("digest") != sha256_digest(body)]
    signature = base64.b64encode(key.sign(body)).decode()
    layers.append({"mediaType": SIMPLE_SIGNING, "digest": sha256_digest(body), "size": len(body),
                   "annotations": {SIGNATURE_ANNOTATION: signature}})
    # The config as containers/image writes it: the layers' digests as the rootfs.
    config = _json({"architecture": "", "os": "", "config": {},
                    "rootfs": {"type": "layers", "diff_ids": [layer["digest"] for layer in layers]}})
    for blob in (body, config):
        client.put_blob(repository, sha256_digest(blob), blob)
    raw = _json({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                 "config": {"mediaType": OCI_CONFIG, "digest": sha256_digest(config), "size": len(config)},
                 "layers": layers})
    put = client.put_manifest(repository, tag, Manifest(OCI_MANIFEST, sha256_digest(raw), raw))
    return Signed(identity, digest, SIGNED, put)
