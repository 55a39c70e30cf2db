"""The smallest root filesystem the lab's disk image and service images share: Debian's dash as
``/bin/sh``, static busybox for the usual applets, GNU ``patch`` with the C library both link, and the
files a Linux image is expected to have. Described once as entries; written as a tar layer or as
an ``mkfs.xfs`` prototype by the callers.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from apex_tools.core.errors import LabError

BUSYBOX = Path("/bin/busybox")
# Not busybox's sh: Debian builds it to prefer its own applets over PATH, so a Dockerfile's plain
# `patch` would run busybox's, which lacks GNU options (--fuzz, --batch) the rebuilds use.
DASH = Path("/bin/dash")
PATCH = Path("/usr/bin/patch")
# dash and GNU patch link only the C library (Debian 12, amd64); the loader and libc are copied as is.
LIBS = ("/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2")


@dataclass(frozen=True)
class Entry:
    """One file system entry: a folder, a file (bytes or a host file to copy) or a symbolic link."""

    path: str
    kind: str  # "dir" | "file" | "link"
    mode: int = 0o755
    data: bytes = b""
    source: str = ""
    target: str = ""

    def content(self) -> bytes:
        return Path(self.source).read_bytes() if self.source else self.data


def folder(path: str, mode: int = 0o755) -> Entry:
    return Entry(path, "dir", mode)


def text(path: str, body: str, mode: int = 0o644) -> Entry:
    return Entry(path, "file", mode, data=body.encode())


def host_file(path: str, source: str | Path, mode: int = 0o755) -> Entry:
    return Entry(path, "file", mode, source=str(Path(source).resolve()))


def link(path: str, target: str) -> Entry:
    return Entry(path, "link", 0o777, target=target)


def require_tools() -> None:
    """Fail naming the Debian package when a host binary the root filesystem copies is missing."""
    for path, package in ((BUSYBOX, "busybox-static"), (DASH, "dash"), (PATCH, "patch"), *((Path(p), "libc6") for p in LIBS)):
        if not path.is_file():
            raise LabError(f"the lab needs {path}, which is missing", f"apt-get install {package}")


def base_entries(users: dict[str, int] | None = None) -> list[Entry]:
    """dash, busybox with its applets linked (``sh`` and ``patch`` left to dash and GNU patch), the
    libraries, /etc basics."""
    require_tools()
    applets = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True, check=True).stdout.split()
    users = {"root": 0, **(users or {})}
    passwd = "".join(f"{name}:x:{uid}:{uid}:{name}:/{'root' if uid == 0 else 'var/lib/' + name}:/bin/sh\n"
                     for name, uid in users.items())
    group = "".join(f"{name}:x:{uid}:\n" for name, uid in users.items())
    entries = [folder(p) for p in ("bin", "dev", "etc", "lib", "lib/x86_64-linux-gnu", "lib64", "proc", "root",
                                   "sys", "usr", "usr/bin", "usr/lib", "var", "var/lib")]
    entries.append(folder("tmp", 0o1777))
    entries.append(host_file("bin/busybox", BUSYBOX))
    entries.append(host_file("bin/sh", DASH))
    entries += [link(f"bin/{a}", "busybox") for a in sorted(set(applets)) if a not in ("busybox", "sh", "patch")]
    entries.append(host_file("usr/bin/patch", PATCH))
    entries += [host_file(p.lstrip("/"), p) for p in LIBS]
    entries += [
        text("etc/passwd", passwd),
        text("etc/group", group),
        text("etc/hosts", "127.0.0.1 localhost\n"),
        text("etc/os-release", "NAME=apex-tools lab\nID=apex-lab\nPRETTY_NAME=\"apex-tools lab stand-in\"\n"),
    ]
    return entries


def with_parents(entries: list[Entry]) -> list[Entry]:
    """``entries`` plus a folder entry for every parent not listed, sorted by path."""
    have = {e.path for e in entries}
    out = list(entries)
    for entry in entries:
        parts = entry.path.split("/")[:-1]
        for n in range(1, len(parts) + 1):
            parent = "/".join(parts[:n])
            if parent not in have:
                have.add(parent)
                out.append(folder(parent))
    return sorted(out, key=lambda e: e.path)
