"""``apex report``: provenance.json as a table that fits 80 columns (``--json`` prints the file)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

WIDTH = 80
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
NAME = 30


def _short(digest: object) -> str:
    """``sha256:`` and the first 12 hex digits (what ``docker images`` shows), or ``-``."""
    text = str(digest or "")
    return text[:19] if text.startswith("sha256:") else (text[:12] or "-")


def _cut(line: str, width: int) -> str:
    return line if len(line) <= width else line[: width - 1] + "…"


def _patch_lines(patch: Mapping[str, Any]) -> list[str]:
    """A patch in two lines: project and change-id (a local file: its path), then its patch set,
    commit and file sha256 (the change-id alone takes 41 columns)."""
    commit = str(patch.get("commit") or patch.get("revision") or "")
    facts = [f"patch set {patch['patch_set']}"] if patch.get("patch_set") else []
    facts += [f"commit {commit[:12]}"] if _COMMIT.match(commit) else ([] if facts else ["local file"])
    facts.append(f"sha256:{str(patch.get('sha256', '')).removeprefix('sha256:')[:12]}")
    return [f"  patch {patch.get('project', '?')} {patch.get('change_id', '?')}", f"    {', '.join(facts)}"]


def report_lines(data: Mapping[str, Any], width: int = WIDTH) -> list[str]:
    """Each image (local digest, upstream digest, signed, source, base and patches), the disk
    image and the deploy command, one fact a line, no line wider than ``width``."""
    tool = data.get("tool") or {}
    lines = [f"provenance (apex-tools {tool.get('version', '?')})", ""]
    images = data.get("images") or []
    lines.append(f"{'image':<{NAME}} {'local digest':<19} {'upstream digest':<19} signed")
    for image in images:
        local, upstream = image.get("local") or {}, image.get("upstream") or {}
        signed = "yes" if image.get("signature") else "no"
        lines.append(f"{str(image.get('name', ''))[:NAME]:<{NAME}} {_short(local.get('digest')):<19} "
                     f"{_short(upstream.get('digest')):<19} {signed}")
        lines.append(f"  from {upstream.get('ref', '-')}")
        rebuild = image.get("rebuild")
        if rebuild:
            lines.append(f"  as {local.get('ref', '-')}")
            lines.append(f"  built by {rebuild.get('builder', '?')} on base "
                         f"{_short((rebuild.get('base') or {}).get('digest'))}")
            for patch in rebuild.get("patches") or []:
                lines += _patch_lines(patch)
    disk = (data.get("disk_images") or {}).get("overcloud")
    if disk:
        upstream = disk.get("upstream") or {}
        sums = ", ".join(f"{k} {str(v)[:12]}" for k, v in sorted((upstream.get("checksums") or {}).items()))
        lines += ["", f"disk image {(disk.get('customized') or {}).get('file', '?')} "
                      f"sha256:{str((disk.get('customized') or {}).get('sha256', ''))[:12]}",
                  f"  from {upstream.get('file', '?')} ({sums or 'no upstream checksum'})"]
        lines += [f"  {change}" for change in disk.get("changes") or []]
        for patch in disk.get("patches") or []:
            lines += _patch_lines(patch)
    deploy = data.get("deploy")
    if deploy:
        lines += ["", f"deploy command {deploy.get('command', '?')} sha256:{deploy.get('sha256', '')}"]
    signed = sum(1 for i in images if i.get("signature"))
    lines += ["", f"{len(images)} images, {signed} signed, "
                  f"{sum(1 for i in images if i.get('rebuild'))} rebuilt"]
    return [_cut(line, width) for line in lines]
