"""Checking the deployment's signatures with a client we did not write: Debian's skopeo 1.9.3.

Debian builds containers/image with sigstore verification patched out ("Debian-local change:
sigstore disabled"): its skopeo still reads the policy and registries.d, finds the
``sha256-<hex>.sig`` attachment, fetches every signature layer, then refuses at the last step.
So a verdict is what skopeo said; where it stopped at that patch, the last step is done here
with the ``cryptography`` library and the public key file alone, under containers/image's rules
(payload digest, the signature over it, the identity and the manifest digest it names).
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from apex_tools.registry.client import RegistryClient

from conftest import need

ACCEPTED = "accepted"
UNSIGNED = "unsigned"
DEBIAN_DISABLED = "sigstore disabled (Debian)"
_FETCHED = re.compile(r"Fetching sigstore attachment \d+/\d+: (sha256:[0-9a-f]{64})")


@dataclass
class Verdict:
    """What skopeo said, and the signature layers it fetched on the way."""

    status: str
    output: str
    fetched: list[str] = field(default_factory=list)


def skopeo_verdict(work_dir: Path, ref: str) -> Verdict:
    """``skopeo copy`` of ``ref`` under ``work_dir``'s policy.json and registries.d."""
    need(shutil.which("skopeo") is not None, "skopeo (Debian package skopeo)")
    with tempfile.TemporaryDirectory(prefix="apex-skopeo.") as dest:
        proc = subprocess.run(
            ["skopeo", "--debug", "copy", "--policy", str(work_dir / "policy.json"),
             "--registries.d", str(work_dir / "registries.d"), "--src-tls-verify=false",
             f"docker://{ref}", f"dir:{dest}"],
            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    out = proc.stdout + proc.stderr
    fetched = _FETCHED.findall(out)
    if proc.returncode == 0:
        return Verdict(ACCEPTED, out, fetched)
    if "A signature was required, but no signature exists" in out:
        return Verdict(UNSIGNED, out, fetched)
    if "Debian-local change: sigstore disabled" in out:
        return Verdict(DEBIAN_DISABLED, out, fetched)
    return Verdict("rejected", out, fetched)


def _verify(public: object, signature: bytes, data: bytes) -> bool:
    try:
        if isinstance(public, ed25519.Ed25519PublicKey):
            public.verify(signature, data)
        elif isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        else:
            public.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())  # type: ignore[union-attr]
    except InvalidSignature:
        return False
    return True


def _identity_matches(identity: str, ref: str) -> bool:
    """policy ``matchRepoDigestOrExact``: a digest reference needs the same repository, a tag the same name."""
    if "@" in ref:
        name = identity.rsplit("@", 1)[0]
        repo = name.rsplit(":", 1)[0] if ":" in name.rsplit("/", 1)[-1] else name
        return repo == ref.split("@", 1)[0]
    return identity == ref


def signature_valid(client: RegistryClient, repository: str, digest: str, ref: str, public_key: Path,
                    layers: list[str]) -> bool:
    """containers/image's last step for the fetched ``layers``: one verifies under ``public_key``
    and names ``digest`` and an identity the policy matches with ``ref``."""
    public = load_pem_public_key(public_key.read_bytes())
    manifest = client.get_manifest(repository, digest.replace(":", "-") + ".sig").json()
    for layer in manifest["layers"]:
        if layer["digest"] not in layers:
            continue
        body = client.get_blob(repository, layer["digest"])
        signature = base64.b64decode(layer["annotations"]["dev.cosignproject.cosign/signature"])
        critical = json.loads(body)["critical"]
        if (_verify(public, signature, body) and critical["type"] == "cosign container image signature"
                and _identity_matches(critical["identity"]["docker-reference"], ref)
                and critical["image"]["docker-manifest-digest"] == digest):
            return True
    return False


def accepted(work_dir: Path, client: RegistryClient, ref: str, repository: str, digest: str) -> tuple[bool, str]:
    """Whether a node would run ``ref`` (= ``repository`` at ``digest``): skopeo's verdict, finished
    with the key alone where Debian's build stops before the signature check."""
    verdict = skopeo_verdict(work_dir, ref)
    if verdict.status == DEBIAN_DISABLED:
        ok = bool(verdict.fetched) and signature_valid(client, repository, digest, ref,
                                                        work_dir / "signing" / "signing.pub", verdict.fetched)
        return ok, verdict.output[-2000:]
    return verdict.status == ACCEPTED, verdict.output[-2000:]


def validate_slsa(data: dict[str, Any]) -> None:
    """Raise unless ``data`` is an in-toto Statement v1 whose predicate is SLSA Provenance v1."""
    from google.protobuf import json_format
    from in_toto_attestation.predicates.provenance.v1 import provenance_pb2
    from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor
    from in_toto_attestation.v1.statement import Statement
    from in_toto_attestation.v1.statement_pb2 import Statement as StatementPb

    # Strict parses: an unknown or mistyped field is an error.
    Statement.copy_from_pb(json_format.Parse(json.dumps(data), StatementPb())).validate()
    assert data["predicateType"] == "https://slsa.dev/provenance/v1"
    predicate = json_format.Parse(json.dumps(data["predicate"]), provenance_pb2.Provenance())
    assert predicate.build_definition.build_type and predicate.run_details.builder.id  # required by SLSA v1
    for dep in predicate.build_definition.resolved_dependencies:
        ResourceDescriptor.copy_from_pb(dep).validate()
