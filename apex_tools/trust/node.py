"""What ceph-loop puts into the overcloud image so its podman refuses what this deployment did
not sign, and the ``disk_images`` section of provenance.json it writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from apex_tools.core.config import Options
from apex_tools.trust.keys import ensure_key, public_pem_of, seen_public_pem
from apex_tools.trust.policy import (
    NODE_POLICY,
    NODE_PUBLIC_KEY,
    NODE_REGISTRIES_D,
    policy_json,
    registries_d,
    write_policy,
)

TO_GENERATE = "(a key to generate)"


def node_files(options: Options, registry: str, create: bool = True) -> dict[str, bytes]:
    """Guest path → content of the policy, the registries.d entry and the public key (empty when
    signing is off). ``create``: generate the key and write the work dir's policy files;
    without it (a dry run) nothing is written and a missing key is a placeholder."""
    if not options.signing.enabled:
        return {}
    if create:
        # A re-run knows the public half without loading the key (and the cryptography library).
        public = seen_public_pem(options.work_dir, options.signing.key)
        if public is None:
            public = ensure_key(options.work_dir, options.signing.key)[0].public_pem
        write_policy(options.work_dir, registry)
    else:
        public = public_pem_of(options.work_dir, options.signing.key) or TO_GENERATE.encode()
    return {
        NODE_POLICY: policy_json(registry, NODE_PUBLIC_KEY).encode(),
        NODE_REGISTRIES_D: registries_d(registry).encode(),
        NODE_PUBLIC_KEY: public,
    }


def upstream_checksums(archive: Path) -> dict[str, Any]:
    """fetch-images' record of an upstream archive: its URL and the checksums upstream published."""
    try:
        meta = json.loads(archive.with_name(archive.name + ".meta.json").read_text())
    except (FileNotFoundError, ValueError):
        return {"file": archive.name}
    return {"file": archive.name, "url": meta.get("url"), "size": meta.get("size"),
            "checksums": meta.get("digests") or {}}
