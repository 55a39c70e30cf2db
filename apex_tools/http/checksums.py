"""Checksums of downloaded files: upstream's sidecar files, and digests computed while writing."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

# Sidecars looked for next to an upstream file, strongest first (RDO publishes .md5).
SIDECARS = ("sha256", "md5")
CHUNK = 1 << 20


@dataclass(frozen=True)
class Expected:
    """A digest the file must have and where the requirement came from."""

    algo: str
    hexdigest: str
    source: str


def parse_sidecar(text: str, name: str, algo: str) -> str | None:
    """The hex digest for ``name`` in a ``<hex>  <name>`` (or bare ``<hex>``) checksum file."""
    length = hashlib.new(algo).digest_size * 2
    for line in text.splitlines():
        words = line.split()
        if not words or not re.fullmatch(rf"[0-9a-fA-F]{{{length}}}", words[0]):
            continue
        listed = words[1].lstrip("*").rsplit("/", 1)[-1] if len(words) > 1 else None
        if listed in (None, name):
            return words[0].lower()
    return None


class Hashes:
    """Incremental digests of the bytes written so far (only the algorithms that will be checked)."""

    def __init__(self, algos: tuple[str, ...]) -> None:
        self.algos = algos
        self.reset()

    def reset(self) -> None:
        self.hashers = {a: hashlib.new(a) for a in self.algos}
        self.count = 0

    def update(self, data: bytes | memoryview) -> None:
        for hasher in self.hashers.values():
            hasher.update(data)
        self.count += len(data)

    def update_from(self, path: Path) -> None:
        """Hash what an earlier attempt already wrote (before resuming after it)."""
        with path.open("rb") as handle:
            while chunk := handle.read(CHUNK):
                self.update(chunk)

    @classmethod
    def checking(cls, expected: list[Expected]) -> Hashes:
        """Hashes of just the algorithms ``expected`` names (hashing costs throughput)."""
        return cls(tuple(sorted({e.algo for e in expected})))

    def hexdigests(self) -> dict[str, str]:
        return {a: h.hexdigest() for a, h in self.hashers.items()}

    def mismatches(self, expected: list[Expected]) -> list[tuple[Expected, str]]:
        """Each expected digest the bytes did not match, with the digest they had."""
        digests = self.hexdigests()
        return [(e, digests[e.algo]) for e in expected if digests[e.algo] != e.hexdigest]


def verified(expected: list[Expected]) -> list[str]:
    """One line per checked digest, naming where it came from."""
    return [f"{e.algo} verified ({e.source})" for e in expected]
