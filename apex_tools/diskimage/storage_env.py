"""ceph-ansible's storage environment, and the cluster identity (FSID, keys) kept across runs.

The FSID and keys are generated once, stored in ``<work_dir>/ceph-secrets.json`` (mode 0600)
and reused, so re-running never changes the identity of a deployed cluster. Keys use Ceph's
armored format: base64 of a little-endian header (u16 type = 1 for AES, u32 seconds and u32
nanoseconds of creation, u16 secret length) followed by a 16-byte random secret — what
``ceph-authtool --gen-print-key`` prints.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import struct
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from apex_tools.core.config import CephOptions
from apex_tools.core.errors import StateError
from apex_tools.core.state import atomic_write, make_private

SECRETS_FILE = "ceph-secrets.json"
KEY_PARAMETERS = ("CephAdminKey", "CephClientKey", "CephMonKey")
_HEADER = struct.Struct("<HIIH")
_AES = 1
_SECRET_LEN = 16


def ceph_key(created: float | None = None) -> str:
    """A new random Ceph secret key in its armored (base64) form."""
    when = time.time() if created is None else created
    header = _HEADER.pack(_AES, int(when), int((when % 1) * 1e9), _SECRET_LEN)
    return base64.b64encode(header + secrets.token_bytes(_SECRET_LEN)).decode()


def is_ceph_key(value: object) -> bool:
    """True when ``value`` decodes as an armored AES Ceph key."""
    if not isinstance(value, str):
        return False
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return False
    if len(raw) < _HEADER.size:
        return False
    kind, _, _, length = _HEADER.unpack_from(raw)
    return kind == _AES and length == len(raw) - _HEADER.size and length > 0


@dataclass(frozen=True)
class ClusterSecrets:
    """The cluster's FSID and its keys by THT parameter name."""

    fsid: str
    keys: dict[str, str]

    @classmethod
    def generate(cls) -> ClusterSecrets:
        return cls(str(uuid.uuid4()), {name: ceph_key() for name in KEY_PARAMETERS})

    def parameters(self) -> dict[str, str]:
        return {"CephClusterFSID": self.fsid, **self.keys}


def load_secrets(work_dir: Path) -> ClusterSecrets | None:
    """The stored cluster secrets, None when never generated; a damaged file fails loudly."""
    path = secrets_path(work_dir)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise _damaged(path, f"not valid JSON ({exc})") from None
    fsid, keys = raw.get("CephClusterFSID") if isinstance(raw, dict) else None, {}
    try:
        uuid.UUID(str(fsid))
    except ValueError:
        raise _damaged(path, f"CephClusterFSID {fsid!r} is not a UUID") from None
    for name in KEY_PARAMETERS:
        if not is_ceph_key(raw.get(name)):
            raise _damaged(path, f"{name} is missing or not a Ceph key")
        keys[name] = raw[name]
    return ClusterSecrets(str(fsid), keys)


def _damaged(path: Path, why: str) -> StateError:
    return StateError(
        f"{path}: {why}",
        "restore it from a backup; delete it only for a new cluster (a deployed one keeps its identity)",
    )


def ensure_secrets(work_dir: Path, loaded: ClusterSecrets | None = None) -> tuple[ClusterSecrets, bool]:
    """The stored secrets (``loaded`` when the caller already read them), generating and storing
    them (0600) the first time; True when new."""
    existing = loaded or load_secrets(work_dir)
    if existing is not None:
        make_private(secrets_path(work_dir))  # copied or restored with another mode: 0600 again
        return existing, False
    fresh = ClusterSecrets.generate()
    body = json.dumps(fresh.parameters(), indent=2, sort_keys=True) + "\n"
    atomic_write(secrets_path(work_dir), body, mode=0o600)
    return fresh, True


def parameters(device: str, options: CephOptions, cluster: ClusterSecrets) -> dict[str, Any]:
    """``parameter_defaults`` for ceph-ansible: the OSD device, pools, limits and identity."""
    params: dict[str, Any] = {
        "CephAnsibleDisksConfig": {"devices": [device], "osd_scenario": "collocated", "journal_size": 512},
        "CephPoolDefaultSize": options.pool_size,
        "CephPoolDefaultPgNum": options.pg_num,
        **cluster.parameters(),
    }
    if options.virtual:
        # Small VMs: cap the OSD/MDS containers and skip the host package install.
        params["CephAnsibleExtraConfig"] = {
            "centos_package_dependencies": [],
            "ceph_osd_docker_memory_limit": "1g",
            "ceph_mds_docker_memory_limit": "1g",
        }
    return params


def render(device: str, options: CephOptions, cluster: ClusterSecrets) -> str:
    """The storage environment file's text: deterministic (sorted keys, block style)."""
    body = yaml.safe_dump(
        {"parameter_defaults": parameters(device, options, cluster)},
        sort_keys=True,
        default_flow_style=False,
    )
    return (
        "# Generated by apex-tools (ceph-loop). Use with THT's environments/ceph-ansible/ceph-ansible.yaml.\n"
        "# Holds the cluster's keys: keep it private.\n" + body
    )


def secrets_path(work_dir: Path) -> Path:
    """Where the cluster secrets live."""
    return Path(work_dir) / SECRETS_FILE

