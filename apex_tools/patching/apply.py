"""Apply an image's patches the way its generated Dockerfile does, in a scratch tree, without an engine.

The flags are the Dockerfile's (``dockerfiles/Dockerfile.j2``): ``patch -p<strip> --forward
--fuzz=0 --batch --no-backup-if-mismatch -r -`` run in the patch's target folder, patches in
order. The scratch tree holds only the files the patches name (and the symbolic links on their
way), so GNU ``patch`` sees what it would see inside the image.
"""

from __future__ import annotations

import posixpath
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from apex_tools.core.errors import BuildError

PATCH_FLAGS = ("--forward", "--fuzz=0", "--batch", "--no-backup-if-mismatch", "-r", "-")
_HUNK = re.compile(r"^@@ -\d+(?:,(\d+))? \+\d+(?:,(\d+))? @@")


@dataclass(frozen=True)
class PatchStep:
    """One patch file, the folder it is applied in (``cd``), its ``-p`` level and a name for errors."""

    file: Path
    target_dir: str
    strip: int = 1
    label: str = ""


def clean(path: str) -> str:
    """An image path without leading ``/`` or ``./`` and normalized (``""`` is the root)."""
    normal = posixpath.normpath("/" + path.strip()).lstrip("/")
    return "" if normal == "." else normal


def _stripped(name: str, strip: int) -> str | None:
    """A header's file name after ``-p<strip>`` (None for /dev/null or too few components)."""
    name = name.split("\t", 1)[0].strip()
    if name.startswith('"') and name.endswith('"'):
        name = name[1:-1]
    if name == "/dev/null":
        return None
    parts = [p for p in name.split("/") if p]
    if len(parts) <= strip:
        return None
    return clean("/".join(parts[strip:]))


def patch_paths(text: str, strip: int) -> list[str]:
    """The paths (relative to the folder patch runs in) a unified diff's headers name, in order.

    Hunk bodies are skipped by their line counts, so a removed line starting with ``--`` is
    never taken for a header.
    """
    lines = text.splitlines()
    out: list[str] = []
    old = new = 0
    i = 0
    while i < len(lines):
        line = lines[i]
        if old > 0 or new > 0:
            tag = line[:1]
            if tag in (" ", ""):
                old, new = old - 1, new - 1
            elif tag == "-":
                old -= 1
            elif tag == "+":
                new -= 1
            i += 1
            continue
        hunk = _HUNK.match(line)
        if hunk:
            old = int(hunk[1]) if hunk[1] is not None else 1
            new = int(hunk[2]) if hunk[2] is not None else 1
        elif line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
            for name in (line[4:], lines[i + 1][4:]):
                path = _stripped(name, strip)
                if path and path not in out:
                    out.append(path)
            i += 2
            continue
        i += 1
    return out


def run_patches(root: Path, steps: Sequence[PatchStep], image: str) -> None:
    """Run GNU patch for each step in ``root/<target_dir>``; a failure names the image, patch and hunk."""
    for step in steps:
        where = root / clean(step.target_dir)
        if not where.is_dir():
            raise BuildError(f"{image}: {step.file.name}: folder {step.target_dir} is not in the image",
                             "check the project's install path (build/projects.yaml, patching.python_path)")
        with step.file.open("rb") as patch_input:
            # umask 022 as in a RUN step, so a new file's mode does not depend on who runs apex.
            done = subprocess.run(["patch", f"-p{step.strip}", *PATCH_FLAGS], cwd=where, stdin=patch_input,
                                  capture_output=True, text=True, errors="replace", umask=0o022)
        if done.returncode != 0:
            output = (done.stdout + done.stderr).strip().replace(str(root), "")
            raise BuildError(f"{image}: patch {step.file.name} ({step.label or step.target_dir}) does not apply "
                             f"in {step.target_dir}:\n  " + "\n  ".join(output.splitlines()[-15:]),
                             "rebase the change on the image's code, or drop it from the patch list")
