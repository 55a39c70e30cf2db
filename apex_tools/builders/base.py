"""The ``Builder`` interface every image builder implements, and the error a failed build raises."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

from apex_tools.core.errors import BuildError

# How many lines of a failed build's log an error carries (the whole log goes to the debug log).
LOG_TAIL = 25


class EngineUnavailable(BuildError):
    """The builder's engine cannot be reached or is not installed (only its images fail)."""


class Builder(ABC):
    """Builds an image from a context folder and pushes it to a registry."""

    name = ""

    @abstractmethod
    def build(self, context: Path, tags: Sequence[str]) -> str:
        """Build ``context``'s Dockerfile tagged with every one of ``tags``; returns the image id."""

    @abstractmethod
    def push(self, ref: str) -> str:
        """Push the local image ``ref`` to its registry; returns the pushed manifest's digest (as the
        push reported it); raise on any error the tool reports."""

    @abstractmethod
    def remove(self, ref: str) -> None:
        """Drop the local image ``ref`` (ignored when absent)."""


def build_failure(what: str, log_lines: Sequence[str], hint: str) -> BuildError:
    """A BuildError carrying the tail of the build log."""
    tail = [line.rstrip() for line in log_lines if line.strip()][-LOG_TAIL:]
    body = "\n  ".join(tail) if tail else "(no output)"
    return BuildError(f"{what}\n  {body}", hint)
