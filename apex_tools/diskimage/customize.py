"""Disk images: sparse copies, cached checksums and libguestfs customization (one launch per batch).

libguestfs runs a small appliance VM for every ``virt-customize`` call, so operations are
collected into one ``Customization`` and applied in a single launch. The appliance honours
``LIBGUESTFS_BACKEND`` and ``LIBGUESTFS_BACKEND_SETTINGS`` from the environment. Where
``/dev/kvm`` exists but nested KVM hangs or crashes the appliance, the launch is bounded and
retried once under TCG (software emulation: about 10-20 s a launch, but it always works); the
backend that worked is remembered in the work dir so later runs go straight to it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

from apex_tools.core.errors import ImageError
from apex_tools.core.state import atomic_write

LOG = logging.getLogger(__name__)

LIBGUESTFS_HINT = (
    "install libguestfs-tools; without working (nested) KVM set "
    "LIBGUESTFS_BACKEND=direct LIBGUESTFS_BACKEND_SETTINGS=force_tcg"
)
# A KVM appliance is up in a few seconds; past this the launch is taken as hung and TCG is tried.
KVM_LAUNCH_SECONDS = 30.0
KVM, TCG = "kvm", "tcg"
# virt-customize's progress lines ("[   0.0] Examining the guest ..."): the first is printed
# before the launch, the second once the appliance is up and the guest inspected.
_PROGRESS = re.compile(r"^\[\s*\d+\.\d+\] ")
# How libguestfs says the appliance itself did not come up (as opposed to a guest command failing).
_LAUNCH_FAILED = re.compile(r"guestfs_launch failed|appliance closed the connection|appliance crashed|"
                            r"killed by signal|/dev/kvm|could not access KVM|KVM_CREATE_VM")


class GuestCommandError(ImageError):
    """virt-customize failed; ``output`` holds everything it and the guest commands printed."""

    def __init__(self, message: str, hint: str, output: str) -> None:
        super().__init__(message, hint)
        self.output = output


def _tool(name: str) -> str:
    """Resolve a command at call time (PATH may change between runs, tests wrap tools)."""
    found = shutil.which(name)
    if found is None:
        raise ImageError(f"{name}: command not found", LIBGUESTFS_HINT)
    return found


@dataclass
class Customization:
    """An ordered batch of ``virt-customize`` operations, applied in one appliance launch.

    Local paths are given relative to the image's folder, where virt-customize runs: its
    ``LOCAL:REMOTE`` arguments split at a colon, which a work dir's path may hold.
    """

    args: list[str] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)
    base: Path | None = None

    def _local(self, path: Path) -> str:
        if self.base is not None:
            with contextlib.suppress(ValueError):
                return str(Path(path).relative_to(self.base))
        return str(path)

    def _add(self, option: str, value: str, step: str) -> Customization:
        self.args += [option, value]
        self.steps.append(step)
        return self

    def mkdir(self, path: str) -> Customization:
        """``mkdir -p`` in the guest."""
        return self._add("--mkdir", path, f"mkdir {path}")

    def upload(self, local: Path, remote: str, mode: int = 0o644) -> Customization:
        """Copy one file into the guest (``remote`` is the full file path) with ``mode``."""
        self._add("--upload", f"{self._local(local)}:{remote}", f"upload {remote}")
        return self._add("--chmod", f"{mode:04o}:{remote}", f"chmod {mode:04o} {remote}")

    def copy_in(self, local_dir: Path, remote_dir: str) -> Customization:
        """Copy a local folder (recursively) into ``remote_dir`` of the guest."""
        return self._add("--copy-in", f"{self._local(local_dir)}:{remote_dir}",
                         f"copy {local_dir.name} into {remote_dir}")

    def link(self, target: str, link: str) -> Customization:
        """Create the symbolic link ``link`` → ``target`` in the guest."""
        return self._add("--link", f"{target}:{link}", f"link {link} -> {target}")

    def run_command(self, command: str, step: str = "") -> Customization:
        """Run a shell command inside the guest (chrooted, guest's own /bin/sh)."""
        return self._add("--run-command", command, step or f"run {command}")

    def delete(self, path: str) -> Customization:
        """``rm -rf`` in the guest."""
        return self._add("--delete", path, f"delete {path}")

    def __bool__(self) -> bool:
        return bool(self.args)


@dataclass(frozen=True)
class Launch:
    """How a customization ran: its output, the backend that worked, why KVM was given up."""

    output: str
    backend: str
    fallback: str = ""

    def note(self) -> str:
        """One line for the summary when the run fell back to TCG, else ""."""
        return f"libguestfs ran under TCG: {self.fallback}" if self.fallback else ""


def _tcg_env() -> dict[str, str]:
    settings = [s for s in os.environ.get("LIBGUESTFS_BACKEND_SETTINGS", "").split(":") if s]
    return {**os.environ, "LIBGUESTFS_BACKEND": "direct",
            "LIBGUESTFS_BACKEND_SETTINGS": ":".join([*settings, "force_tcg"] if "force_tcg" not in settings else settings)}


def _forced_tcg() -> bool:
    return "force_tcg" in os.environ.get("LIBGUESTFS_BACKEND_SETTINGS", "").split(":")


def remembered_backend(memory: Path | None) -> str | None:
    """The backend that worked last time (``kvm``/``tcg``) per ``memory``, else None."""
    if memory is None:
        return None
    with contextlib.suppress(FileNotFoundError, ValueError, AttributeError):
        backend = json.loads(Path(memory).read_text()).get("backend")
        return backend if backend in (KVM, TCG) else None
    return None


def _remember(memory: Path | None, backend: str, why: str) -> None:
    if memory is not None and remembered_backend(memory) != backend:
        memory.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(memory, json.dumps({"backend": backend, "why": why}, indent=2, sort_keys=True) + "\n")


def _run_bounded(argv: list[str], env: dict[str, str], launch_timeout: float | None,
                 cwd: Path) -> tuple[int | None, str]:
    """Run virt-customize in ``cwd``; (exit code, output), or (None, output) when the launch outlived the bound.

    It leads a process group of its own, ended with it (qemu included) when the bound passes or
    this call is interrupted (SIGTERM, SIGINT)."""
    proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=env, start_new_session=True)
    lines: list[str] = []
    launched = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        progress = 0
        for raw in proc.stdout:
            line = raw.decode(errors="replace")
            lines.append(line)
            progress += bool(_PROGRESS.match(line))
            if progress >= 2:
                launched.set()
        launched.set()  # end of output: nothing left to wait for

    def stop() -> None:
        end_group(proc)
        reader.join()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        if not launched.wait(launch_timeout):
            stop()  # the appliance never came up
            return None, "".join(lines)
        code = proc.wait()
    except BaseException:
        stop()  # interrupted: leave no appliance behind
        raise
    reader.join()
    return code, "".join(lines)


def customize(image: Path, ops: Customization, memory: Path | None = None,
              kvm_launch_seconds: float = KVM_LAUNCH_SECONDS) -> Launch:
    """Apply ``ops`` to ``image`` in one ``virt-customize`` launch; how it ran.

    Unless the environment already forces TCG or ``memory`` (a small JSON file in the work dir)
    says KVM failed here before, the appliance is launched with the default backend; a launch that
    fails or hangs longer than ``kvm_launch_seconds`` is retried once under TCG. The backend that
    worked is written to ``memory``. A failure raises ``GuestCommandError`` carrying the full
    output (virt-customize dumps the failed guest command's log to stderr), so callers can tell
    which step failed. It runs in the image's folder (relative paths: see ``Customization``, so a
    path holding ``:`` works).
    """
    if not ops:
        return Launch("", TCG if _forced_tcg() else KVM)
    image = Path(image)
    argv = [_tool("virt-customize"), "--no-network", "-a", image.name, *ops.args]
    LOG.debug("virt-customize %s (in %s)", " ".join(argv[1:]), image.parent)
    fallback = ""
    if _forced_tcg() or remembered_backend(memory) == TCG:
        backend, env, bound = TCG, _tcg_env(), None
    else:
        backend, env, bound = KVM, dict(os.environ), kvm_launch_seconds
        code, output = _run_bounded(argv, env, bound, image.parent)
        if code is None or (code != 0 and _LAUNCH_FAILED.search(output)):
            fallback = (f"the KVM launch hung for {bound:.0f} s" if code is None
                        else f"the KVM launch failed ({_last_error(output)})")
            LOG.warning("libguestfs: %s; retrying once under TCG", fallback)
            LOG.debug("virt-customize output (KVM):\n%s", output)
            backend, env = TCG, _tcg_env()
    if backend == TCG:
        code, output = _run_bounded(argv, env, None, image.parent)
    if code != 0:
        tried = "under KVM and then TCG" if fallback else f"under {backend.upper()}"
        launch = bool(_LAUNCH_FAILED.search(output))
        raise GuestCommandError(
            f"virt-customize of {image} failed {tried}: {_last_error(output)}",
            "see the log for the full output; " + (LIBGUESTFS_HINT if launch else "the failing step is named above"),
            output,
        )
    LOG.debug("virt-customize output:\n%s", output)
    _remember(memory, backend, fallback or f"{backend} launch worked")
    return Launch(output, backend, fallback)


def _last_error(output: str) -> str:
    last = [line for line in output.splitlines() if "error" in line.lower()][-1:] or ["(no output)"]
    return last[0].strip()


def end_group(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM to ``proc``'s process group (it leads its own), SIGKILL after ``timeout``; reaped."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # what outlived its leader (the qemu appliance)
    proc.wait()


def sparse_copy(source: Path, dest: Path) -> None:
    """Copy ``source`` to ``dest`` keeping holes (and sharing extents where the filesystem can)."""
    done = subprocess.run([_tool("cp"), "--reflink=auto", "--sparse=auto", "--", str(source), str(dest)],
                          stdin=subprocess.DEVNULL, capture_output=True)
    if done.returncode != 0:
        raise ImageError(
            f"cannot copy {source} to {dest}: {done.stderr.decode(errors='replace').strip()}",
            f"check free space and permissions in {dest.parent}",
        )


class ChecksumCache:
    """sha256 of big files, remembered by path, size and mtime so a re-run doesn't re-read them."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def _load(self) -> dict[str, dict[str, object]]:
        with contextlib.suppress(FileNotFoundError, ValueError):
            data = json.loads(self.path.read_text())
            if isinstance(data, dict):
                return data
        return {}

    @staticmethod
    def _key(st: os.stat_result) -> dict[str, int]:
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}

    def cached(self, file: Path) -> str | None:
        """The remembered sha256 of ``file`` if it is unchanged since, else None."""
        entry = self._load().get(str(Path(file).resolve()))
        if entry and {k: entry.get(k) for k in ("size", "mtime_ns")} == self._key(Path(file).stat()):
            return str(entry["sha256"])
        return None

    def remember(self, file: Path, sha256: str, st: os.stat_result) -> None:
        """Record ``sha256`` for ``file`` as it was when ``st`` was taken."""
        data = self._load()
        data[str(Path(file).resolve())] = {**self._key(st), "sha256": sha256}
        atomic_write(self.path, json.dumps(data, indent=2, sort_keys=True) + "\n")

