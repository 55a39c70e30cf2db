"""``work_dir/provenance.json`` and the SLSA v1 statements of the rebuilt images.

provenance.json has one section per target that knows the facts: ``images`` (push-registry:
each image's upstream and local reference and digest, its signature, and for a rebuilt image
its base, patches and builder), ``disk_images`` (ceph-loop: the upstream checksums, the
customized image's sha256, what was applied), ``deploy`` (the deploy command's sha256). Each
target replaces only its own section; no timestamps, so the same inputs give the same bytes.

A rebuilt image also gets an in-toto Statement v1 with a SLSA Provenance v1 predicate (subject:
the ``:apex`` digest; resolved dependencies: the base image and the patches), kept in
``work_dir/provenance/<image>.intoto.json``, wrapped in a DSSE envelope signed with the
deployment's key, and attached in the registry by the OCI 1.1 referrers tag scheme (an index
tagged ``sha256-<hex>``: Debian's docker-registry has no referrers API). ``:apex`` itself is
left a single-platform manifest.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from apex_tools import __version__
from apex_tools.core.errors import ApexError
from apex_tools.core.state import write_if_changed
from apex_tools.registry.client import OCI_INDEX, OCI_MANIFEST, Manifest, RegistryClient, sha256_digest
from apex_tools.trust.keys import SigningKey
from apex_tools.trust.sigstore import attachment_tag

PROVENANCE_FILE = "provenance.json"
STATEMENTS_DIR = "provenance"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
SLSA_PROVENANCE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://opnfv.org/apex-tools/rebuild/v1"
BUILDER_ID = "https://opnfv.org/apex-tools/push-registry"
IN_TOTO_JSON = "application/vnd.in-toto+json"
DSSE_ENVELOPE = "application/vnd.dsse.envelope.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
EMPTY = b"{}"
PREDICATE_ANNOTATION = "in-toto.io/predicate-type"
_GERRIT_CHANGE = re.compile(r"^I[0-9a-f]{40}$")
_GIT_COMMIT = re.compile(r"^[0-9a-f]{40}$")


class ProvenanceError(ApexError):
    """provenance.json is missing or unreadable."""


def _dumps(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def load_provenance(work_dir: Path) -> dict[str, Any]:
    """provenance.json as written; raises naming what to run when there is none."""
    path = Path(work_dir) / PROVENANCE_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ProvenanceError(f"{path}: no provenance yet", "run push-registry (or deploy) first") from None
    except ValueError as exc:
        raise ProvenanceError(f"{path}: not valid JSON ({exc})", "re-run push-registry with --force") from None
    if not isinstance(data, dict):
        raise ProvenanceError(f"{path}: not a JSON object", "re-run push-registry with --force")
    return data


def update_provenance(work_dir: Path, section: str, value: Any) -> bool:
    """Replace one section of provenance.json (atomically); True when the file changed."""
    path = Path(work_dir) / PROVENANCE_FILE
    try:
        data = load_provenance(work_dir)
    except ProvenanceError:
        data = {}
    data.update({"tool": {"name": "apex-tools", "version": __version__}, section: value})
    return write_if_changed(path, _dumps(data))


def patch_dependency(patch: Mapping[str, Any], sha256: str, gerrit_url: str) -> dict[str, Any]:
    """A patch as a SLSA resource descriptor: its Gerrit change (or local file), commit and file hash;
    the annotations name its project, change-id, patch set number, revision and commit."""
    change = str(patch.get("change_id", ""))
    commit = str(patch.get("commit") or patch.get("revision") or "")
    digest = {"sha256": sha256, **({"gitCommit": commit} if _GIT_COMMIT.match(commit) else {})}
    uri = f"{gerrit_url.rstrip('/')}/q/{change}" if _GERRIT_CHANGE.match(change) else f"file://{change}"
    annotations = {k: patch[k] for k in ("project", "change_id", "patch_set", "revision", "commit", "target_dir")
                   if patch.get(k)}
    return {"uri": uri, "name": str(patch.get("file", "")), "digest": digest, "annotations": annotations}


def statement(subject: str, digest: str, base: str, base_digest: str, dependencies: list[dict[str, Any]],
              parameters: Mapping[str, Any]) -> dict[str, Any]:
    """An in-toto Statement v1 with a SLSA Provenance v1 predicate for one rebuilt image."""
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": subject, "digest": {"sha256": digest.split(":", 1)[1]}}],
        "predicateType": SLSA_PROVENANCE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": dict(parameters),
                "resolvedDependencies": [
                    {"uri": f"docker://{base}", "name": "base", "digest": {"sha256": base_digest.split(":", 1)[1]}},
                    *dependencies,
                ],
            },
            "runDetails": {"builder": {"id": BUILDER_ID, "version": {"apex-tools": __version__}}},
        },
    }


def pae(payload_type: str, body: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what the signature covers."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(body), body)


def envelope(data: Mapping[str, Any], key: SigningKey | None) -> dict[str, Any]:
    """The statement in a DSSE envelope, signed by ``key`` (unsigned: no signatures)."""
    body = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    signatures = [{"keyid": key.key_id, "sig": base64.b64encode(key.sign(pae(IN_TOTO_JSON, body))).decode()}
                  ] if key else []
    return {"payloadType": IN_TOTO_JSON, "payload": base64.b64encode(body).decode(), "signatures": signatures}


def write_statement(work_dir: Path, image: str, data: Mapping[str, Any], key: SigningKey | None) -> bytes:
    """Keep the statement and its envelope in ``work_dir/provenance/``; the envelope's bytes."""
    folder = Path(work_dir) / STATEMENTS_DIR
    write_if_changed(folder / f"{image}.intoto.json", _dumps(data))
    raw = (json.dumps(envelope(data, key), sort_keys=True, indent=2) + "\n").encode()
    existing = folder / f"{image}.dsse.json"
    # An ECDSA signature differs every time: an unchanged statement keeps its envelope.
    if existing.is_file() and _same_payload(existing.read_bytes(), raw):
        return existing.read_bytes()
    write_if_changed(existing, raw)
    return raw


def _same_payload(old: bytes, new: bytes) -> bool:
    try:
        a, b = json.loads(old), json.loads(new)
    except ValueError:
        return False
    return a.get("payload") == b.get("payload") and [s.get("keyid") for s in a.get("signatures", [])] == [
        s.get("keyid") for s in b.get("signatures", [])]


def attach(client: RegistryClient, repository: str, subject: Manifest, envelope_raw: bytes) -> bool:
    """Attach ``envelope_raw`` to ``subject`` by the referrers tag scheme; False when already there.

    The referrer is an OCI manifest (``subject`` set, ``artifactType`` in-toto, the envelope its
    one layer); the index tagged ``sha256-<hex>`` lists it beside other referrers, replacing an
    older in-toto referrer of ours.
    """
    layer = {"mediaType": DSSE_ENVELOPE, "digest": sha256_digest(envelope_raw), "size": len(envelope_raw),
             "annotations": {PREDICATE_ANNOTATION: SLSA_PROVENANCE}}
    referrer = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": IN_TOTO_JSON,
        "config": {"mediaType": OCI_EMPTY, "digest": sha256_digest(EMPTY), "size": len(EMPTY)},
        "layers": [layer],
        "subject": {"mediaType": subject.media_type, "digest": subject.digest, "size": len(subject.raw)},
    }, sort_keys=True, separators=(",", ":")).encode()
    referrer_digest = sha256_digest(referrer)
    tag = attachment_tag(subject.digest, "")
    entries: list[dict[str, Any]] = []
    if client.head_manifest(repository, tag) is not None:
        entries = list(client.get_manifest(repository, tag).json().get("manifests") or [])
        if any(e.get("digest") == referrer_digest for e in entries):
            return False
        entries = [e for e in entries if e.get("artifactType") != IN_TOTO_JSON]
    for blob in (EMPTY, envelope_raw):
        client.put_blob(repository, sha256_digest(blob), blob)
    client.put_manifest(repository, referrer_digest, Manifest(OCI_MANIFEST, referrer_digest, referrer))
    entries.append({"mediaType": OCI_MANIFEST, "digest": referrer_digest, "size": len(referrer),
                    "artifactType": IN_TOTO_JSON, "annotations": {PREDICATE_ANNOTATION: SLSA_PROVENANCE}})
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries},
                       sort_keys=True, separators=(",", ":")).encode()
    client.put_manifest(repository, tag, Manifest(OCI_INDEX, sha256_digest(index), index))
    return True
