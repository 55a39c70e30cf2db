"""The fetch-images target: upstream RDO disk images, cached per OpenStack version and unpacked.

``image_dir/<os_version>/`` holds the downloaded files with their validators beside them
(``<file>.meta.json``) and every tarball unpacked in place, recorded in
``.<tarball>.unpacked.json`` so it is unpacked again only when it changed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import posixpath
import shutil
import tarfile
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from apex_tools.core.config import Options
from apex_tools.core.render_safety import control_char
from apex_tools.http.download import Downloader, RetryPolicy, human_size, join_url
from apex_tools.core.errors import DownloadError, ImageError
from apex_tools.http.filecache import Validators, artifact_lock, cached_validators
from apex_tools.core.run import Item, RunContext, Status, TargetResult
from apex_tools.core.state import atomic_write, fingerprint
from apex_tools.core.workdir import (
    FETCH_IMAGES,
    IPA_TAR,
    OVERCLOUD_TAR,
    UNDERCLOUD_QCOW2,
    artifact_dir,
)

log = logging.getLogger(__name__)

CHUNK = 1 << 20

TARGET = FETCH_IMAGES


@dataclass(frozen=True)
class Artifact:
    """One upstream file and the config key pinning its sha256."""

    name: str
    pin_key: str

    @property
    def is_tarball(self) -> bool:
        return self.name.endswith((".tar", ".tar.gz", ".tgz"))


def artifacts(options: Options) -> list[Artifact]:
    """The files this deployment needs from upstream."""
    wanted = [Artifact(OVERCLOUD_TAR, "overcloud_sha256"), Artifact(IPA_TAR, "ipa_sha256")]
    if options.fetch.undercloud_image:
        wanted.append(Artifact(UNDERCLOUD_QCOW2, "undercloud_sha256"))
    return wanted


def retry_policy(options: Options) -> RetryPolicy:
    """The downloader's retry policy from the ``fetch`` config section."""
    f = options.fetch
    return RetryPolicy(f.tries, f.backoff, f.max_wait, f.connect_timeout, f.read_timeout)


def fetch_images(run: RunContext, downloader: Downloader | None = None) -> TargetResult:
    """Revalidate, download (resuming) and verify the upstream images, then unpack changed tarballs."""
    options = run.options
    folder = artifact_dir(options, run.os_version)
    base = run.expand(options.upstream.images_url)
    downloader = downloader or Downloader(policy=retry_policy(options), progress=run.progress)
    wanted = [(a, join_url(base, a.name), folder / a.name) for a in artifacts(options)]
    if run.dry_run:
        return _plan(run, downloader, wanted)

    items: list[Item] = []
    changes: list[str] = []
    identities: dict[str, object] = {}
    outputs: list[Path] = []
    for artifact, url, dest in wanted:
        try:
            fetched = downloader.fetch(url, dest, pinned=_pinned(options, artifact), offline=options.cache_only,
                                       force=run.force)
            members, unpacked = [], False
            if artifact.is_tarball:
                members, unpacked = unpack_if_changed(dest, folder, fetched.validators, force=run.force)
        except (DownloadError, ImageError, OSError) as exc:
            if isinstance(exc, OSError):
                if exc.filename is None:
                    raise
                # The cache folder itself: full, read-only, or not ours.
                exc = DownloadError(f"{exc.filename}: {exc.strerror}",
                                    "check that image_dir is writable and has room for the images")
            log.error("%s: %s", artifact.name, exc)
            items.append(Item(artifact.name, "failed", str(exc)))
            continue
        files = f"{len(members)} file" + ("s" if len(members) != 1 else "")
        items.append(Item(artifact.name, fetched.action, fetched.detail() + (f"; unpacked {files}" if unpacked else "")))
        if fetched.changed:
            changes.append(f"{fetched.action} {artifact.name} ({human_size(fetched.validators.size)})")
        if unpacked:
            changes.append(f"unpacked {artifact.name}: {', '.join(members)}")
        identities[artifact.name] = fetched.validators.identity()
        outputs += [dest, *(folder / m for m in members)]
    failed = [i.name for i in items if i.status == "failed"]
    if failed:
        return TargetResult(TARGET, Status.FAILED, [f"failed: {', '.join(failed)} (the rows below say why)"], items)
    fp = fingerprint({"folder": folder, "artifacts": identities})
    if changes or not run.state.is_current(TARGET, fp):
        # Also when nothing moved: a cache filled by another run (other work dir) gets recorded.
        run.state.save(TARGET, fp, outputs=outputs, data={"artifacts": identities})
    if not changes:
        return TargetResult(TARGET, Status.UP_TO_DATE, ["up to date"], items)
    return TargetResult(TARGET, Status.CHANGED, changes, items)


def _pinned(options: Options, artifact: Artifact) -> dict[str, str]:
    value = getattr(options.fetch, artifact.pin_key)
    return {"sha256": value} if value else {}


def _plan(run: RunContext, downloader: Downloader, wanted: list[tuple[Artifact, str, Path]]) -> TargetResult:
    """What a real run would do, one line per action, touching nothing (a conditional HEAD at most)."""
    plan, items = [], []
    # One question to the upstream first: unreachable, it is said once, not once per artifact.
    unreachable = None if run.options.cache_only else downloader.unreachable(wanted[0][1])
    if unreachable is not None:
        host = urllib.parse.urlsplit(wanted[0][1]).netloc
        names = [artifact.name for artifact, _, _ in wanted]
        plan = [f"image server {'' if host in unreachable else host + ' '}unreachable: {unreachable}",
                f"a real run would download {', '.join(names)}"]
        items = [Item(name, "planned", f"fetch from {url}") for name, (_, url, _) in zip(names, wanted)]
        return TargetResult(TARGET, Status.PLANNED, plan, items)
    for artifact, url, dest in wanted:
        reason = downloader.plan(url, dest, offline=run.options.cache_only, force=run.force)
        if reason is None and artifact.is_tarball:
            reason = unpack_reason(dest, dest.parent, cached_validators(dest), force=run.force)
        if reason:
            plan.append(reason)
        detail = reason.removeprefix(f"{artifact.name}: ") if reason else ""
        items.append(Item(artifact.name, "planned" if reason else "up to date", detail))
    if not plan:
        return TargetResult(TARGET, Status.UP_TO_DATE, ["up to date"], items)
    return TargetResult(TARGET, Status.PLANNED, plan, items)


# ---- unpacking --------------------------------------------------------------------------


def _record_path(tarball: Path) -> Path:
    return tarball.with_name(f".{tarball.name}.unpacked.json")


def _stat(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _tar_id(tarball: Path, validators: Validators | None) -> object:
    """Which upstream version an unpacking came from (its validators, else its size)."""
    return validators.identity() if validators else {"size": _stat(tarball)}


def unpack_reason(tarball: Path, folder: Path, validators: Validators | None, *, force: bool = False) -> str | None:
    """Why ``tarball`` needs unpacking into ``folder``, or None when its last unpacking still stands."""
    if force:
        return f"unpack {tarball.name} again (--force)"
    try:
        record = json.loads(_record_path(tarball).read_text())
    except (FileNotFoundError, ValueError):
        return f"unpack {tarball.name} (never unpacked here)"
    if record.get("tarball") != _tar_id(tarball, validators) or record.get("tarball_stat") != _stat(tarball):
        return f"unpack {tarball.name} (it changed since its last unpacking)"
    for name, stat in record.get("members", {}).items():
        if _stat(folder / name) != stat:
            return f"unpack {tarball.name} ({name} is missing or was modified)"
    return None


def unpack_if_changed(
    tarball: Path, folder: Path, validators: Validators | None, *, force: bool = False
) -> tuple[list[str], bool]:
    """Unpack ``tarball`` into ``folder`` unless already done for this version; (member files, unpacked?)."""
    with artifact_lock(tarball, "unpacking"):
        reason = unpack_reason(tarball, folder, validators, force=force)
        if reason is None:
            return sorted(json.loads(_record_path(tarball).read_text())["members"]), False
        log.info("%s", reason)
        for stale in folder.glob(f".unpack-{tarball.name}-*"):
            # Left by a run that was killed mid-way (we hold the lock: nobody else is using it).
            shutil.rmtree(stale, ignore_errors=True)
        members = safe_unpack(tarball, folder)
        record = {"tarball": _tar_id(tarball, validators), "tarball_stat": _stat(tarball),
                  "members": {name: _stat(folder / name) for name in members}}
        atomic_write(_record_path(tarball), json.dumps(record, indent=2, sort_keys=True) + "\n")
        return members, True


def check_members(tarball: Path, members: list[tarfile.TarInfo]) -> None:
    """Refuse a tarball with anything but regular files and folders, or a name that could land
    outside its folder.

    RDO's tarballs hold a few plain files. Links are refused rather than resolved: a chain of
    symlinks, each harmless alone, is how a lexical check is defeated (``a -> .``, ``a/b -> ..``,
    then ``a/b/x``), and Debian's Python 3.11.2 has no tarfile data filter to catch it."""
    seen: set[str] = set()
    for member in members:
        name = member.name
        normal = posixpath.normpath(name)
        problem = None
        if name.startswith("/") or posixpath.isabs(normal):
            problem = "is an absolute path"
        elif normal == ".." or normal.startswith("../") or ".." in name.split("/"):
            problem = "escapes the folder"
        elif control_char(name):
            problem = f"has the control character {control_char(name)} in its name"
        elif member.issym():
            problem = f"is a symlink (→ {member.linkname}); links are refused"
        elif member.islnk():
            problem = f"is a hard link (→ {member.linkname}); links are refused"
        elif not (member.isfile() or member.isdir()):
            problem = "is a device, fifo or other special file"
        elif member.isfile() and normal in seen:
            problem = "appears twice"
        if problem:
            raise ImageError(
                f"{tarball}: member {name!r} {problem}; refusing to unpack it",
                "the upstream tarball is unsafe or corrupt: check upstream.images_url, delete the file and fetch again",
            )
        seen.add(normal)


def _extract(tar: tarfile.TarFile, members: list[tarfile.TarInfo], into: Path) -> None:
    """Write checked members under ``into`` ourselves: folders 0755, files 0644 or 0755 (never
    setuid, setgid or sticky; never the archive's owner), each file created anew without
    following a link, with the archive's mtime."""
    for member in members:
        target = into / posixpath.normpath(member.name)
        if member.isdir():
            target.mkdir(mode=0o755, parents=True, exist_ok=True)
            continue
        target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        mode = 0o755 if member.mode & 0o111 else 0o644
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        with os.fdopen(fd, "wb") as out, tar.extractfile(member) as src:  # type: ignore[union-attr]
            shutil.copyfileobj(src, out, CHUNK)
        os.chmod(target, mode)  # whatever the umask
        os.utime(target, (member.mtime, member.mtime))


def safe_unpack(tarball: Path, folder: Path) -> list[str]:
    """Unpack into a temporary folder beside ``folder``'s files, then move each entry into place."""
    try:
        with tarfile.open(tarball) as tar:
            members = tar.getmembers()
            check_members(tarball, members)
            tmp = Path(tempfile.mkdtemp(dir=folder, prefix=f".unpack-{tarball.name}-"))
            try:
                _extract(tar, members, tmp)
                files = sorted(posixpath.normpath(m.name) for m in members if not m.isdir())
                for entry in sorted(p.name for p in tmp.iterdir()):
                    target = folder / entry
                    if target.is_dir() and not target.is_symlink():
                        shutil.rmtree(target)
                    (tmp / entry).replace(target)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    except (tarfile.TarError, EOFError) as exc:
        raise ImageError(f"{tarball}: not a readable tarball ({exc})",
                         "delete it and fetch again (apex fetch-images --force)") from None
    with contextlib.suppress(ValueError):
        files.remove(".")
    return files
