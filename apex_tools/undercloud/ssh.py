"""How this host reaches the undercloud over SSH."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SSHTarget:
    """Host, port, user and private key of an SSH connection to the undercloud."""

    host: str
    port: int
    user: str
    key: Path
