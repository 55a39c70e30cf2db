"""Copy images between registries, preserving digests, moving each blob at most once per run.

For each image: one HEAD on each side; an equal digest means "already there". Otherwise the
blobs are copied (skipped when the target repository has them, mounted when this run already
put them in another repository of the target) and the exact manifest bytes are PUT, children
of a manifest list / OCI index first. Several images are copied at once; a per-blob lock makes
images that share base layers wait for the first copy and then mount it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import requests

from apex_tools.core.errors import ApexError
from apex_tools.core.reference import ImageRef
from apex_tools.registry.client import Manifest, RegistryClient, RegistryHTTPError

log = logging.getLogger(__name__)

MIRRORED = "mirrored"
ALREADY_THERE = "already there"
FAILED = "failed"


@dataclass(frozen=True)
class CopyJob:
    """One image to copy: ``source`` (tag or digest) to ``target`` (a tag).

    A caller that already HEADed the manifests passes what it found, so the copy does not ask
    again: ``source_digest``, and ``target_digest`` (None: absent) with ``target_checked``.
    """

    source: ImageRef
    target: ImageRef
    source_digest: str | None = None
    target_digest: str | None = None
    target_checked: bool = False


@dataclass
class CopyResult:
    """How one image's copy ended: status, the manifest digest, what moved, and why it failed."""

    job: CopyJob
    status: str
    digest: str = ""
    detail: str = ""
    bytes_sent: int = 0
    error: ApexError | None = None


@dataclass
class MirrorStats:
    """Counters over a whole run (thread-safe through ``add``)."""

    bytes_sent: int = 0
    blobs_sent: int = 0
    blobs_mounted: int = 0
    blobs_present: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)


ClientFor = Callable[[str], RegistryClient]
# Blobs of one image copied at once (docker push uses 5, tripleo's uploader 4).
BLOB_WORKERS = 4


@dataclass(frozen=True)
class _Pending:
    """An image to copy: its job, the source manifest, and its blob bytes (for ordering)."""

    job: CopyJob
    manifest: Manifest
    size: int


class Mirror:
    """Copies images with ``jobs`` workers; remembers which blobs each target repository has."""

    def __init__(
        self,
        client_for: ClientFor,
        jobs: int = 4,
        *,
        blob_attempts: int = 3,
        on_bytes: Callable[[int], None] | None = None,
        on_image: Callable[[CopyResult], None] | None = None,
    ) -> None:
        self.client_for = client_for
        self.jobs = max(1, jobs)
        self.blob_attempts = blob_attempts
        self.on_bytes = on_bytes
        self.on_image = on_image
        self.stats = MirrorStats()
        # (target host, digest) → target repositories known to hold the blob in this run.
        self._holders: dict[tuple[str, str], set[str]] = {}
        self._blob_locks: dict[tuple[str, str], threading.Lock] = {}
        self._guard = threading.Lock()

    def copy_all(self, jobs: Sequence[CopyJob]) -> list[CopyResult]:
        """Copy every job (in parallel); results in the jobs' order. Failures are results, not raised.

        First every image is looked at (HEADs, the source manifest); then the ones to copy go
        largest first, so the big transfers overlap the many small, latency-bound ones.
        """
        if not jobs:
            return []
        workers = min(self.jobs, len(jobs))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mirror") as pool:
            looked = list(pool.map(lambda job: self._guarded(job, self._look), jobs))
            pending = sorted((item for item in looked if isinstance(item, _Pending)), key=lambda p: -p.size)
            copied = {id(p.job): r for p, r in zip(pending, pool.map(
                lambda item: self._guarded(item.job, lambda _: self._finish(item)), pending))}
        return [copied[id(item.job)] if isinstance(item, _Pending) else item for item in looked]

    def _guarded(self, job: CopyJob, step: Callable[[CopyJob], CopyResult | _Pending]) -> CopyResult | _Pending:
        """Run one step of ``job``; a failure becomes a FAILED result; a final result is reported."""
        try:
            result = step(job)
        except ApexError as exc:
            log.debug("copy of %s failed", job.source, exc_info=True)
            result = CopyResult(job, FAILED, detail=exc.message.splitlines()[0], error=exc)
        if isinstance(result, CopyResult) and self.on_image:
            self.on_image(result)
        return result

    def _look(self, job: CopyJob) -> CopyResult | _Pending:
        """One HEAD each side (unless the job knows); an equal digest is "already there", else the
        source manifest to copy."""
        src = self.client_for(job.source.registry)
        dst = self.client_for(job.target.registry)
        source, target = job.source, job.target
        digest = job.source_digest
        if digest is None:
            found = src.head_manifest(source.repository, source.reference)
            if found is None:
                raise RegistryHTTPError(
                    f"registry {source}: image not found upstream",
                    "check upstream.registry/namespace/tag, or that the image exists for this release",
                    registry=source.registry, repository=source.repository, reference=source.reference, status=404,
                )
            digest = found[0]
        if job.target_checked:
            present_digest = job.target_digest
        else:
            present = dst.head_manifest(target.repository, target.reference)
            present_digest = present[0] if present else None
        if present_digest == digest:
            return CopyResult(job, ALREADY_THERE, digest, "digest matches")
        manifest = src.get_manifest(source.repository, digest)
        return _Pending(job, manifest, sum(int(b.get("size", 0)) for b in manifest.blobs() + manifest.children()))

    def _finish(self, pending: _Pending) -> CopyResult:
        """Copy the blobs (and child manifests) of a looked-at image, then PUT its manifest."""
        job, manifest = pending.job, pending.manifest
        src = self.client_for(job.source.registry)
        dst = self.client_for(job.target.registry)
        sent = self._copy_manifest(src, dst, job.source.repository, job.target.repository, manifest)
        dst.put_manifest(job.target.repository, job.target.reference, manifest)
        detail = f"{sent} bytes sent" if sent else "no blob moved"
        if manifest.is_index:
            detail += f", {len(manifest.children())} platform manifests"
        log.debug("mirrored %s → %s (%s)", job.source, job.target, detail)
        return CopyResult(job, MIRRORED, manifest.digest, detail, bytes_sent=sent)

    def _copy_manifest(self, src: RegistryClient, dst: RegistryClient, src_repo: str, dst_repo: str,
                       manifest: Manifest) -> int:
        """Copy what ``manifest`` references (blobs, or child manifests by digest); bytes sent.

        Blobs of one image go concurrently (a few at a time), like layers in docker push.
        """
        sent = 0
        for child in manifest.children():
            if dst.head_manifest(dst_repo, child["digest"]) is not None:
                continue
            child_manifest = src.get_manifest(src_repo, child["digest"])
            sent += self._copy_manifest(src, dst, src_repo, dst_repo, child_manifest)
            dst.put_manifest(dst_repo, child["digest"], child_manifest)
        blobs = manifest.blobs()
        if len(blobs) <= 1:
            return sent + sum(self._copy_blob(src, dst, src_repo, dst_repo, b["digest"], int(b["size"])) for b in blobs)
        with ThreadPoolExecutor(max_workers=min(BLOB_WORKERS, len(blobs)), thread_name_prefix="blob") as pool:
            sizes = pool.map(lambda b: self._copy_blob(src, dst, src_repo, dst_repo, b["digest"], int(b["size"])),
                             blobs)
            return sent + sum(sizes)

    def _lock_for(self, key: tuple[str, str]) -> threading.Lock:
        with self._guard:
            return self._blob_locks.setdefault(key, threading.Lock())

    def _copy_blob(self, src: RegistryClient, dst: RegistryClient, src_repo: str, dst_repo: str,
                   digest: str, size: int) -> int:
        """Make ``dst_repo`` hold ``digest``: known, mounted, present, or sent; bytes sent."""
        key = (dst.host, digest)
        with self._lock_for(key):
            holders = self._holders.setdefault(key, set())
            if dst_repo in holders:
                return 0
            location = None
            mount_from = next(iter(sorted(holders)), None)
            if mount_from is None and src.host == dst.host and src_repo != dst_repo:
                mount_from = src_repo
            if mount_from is not None:
                location = dst.mount_blob(dst_repo, digest, mount_from)
                if location is None:
                    holders.add(dst_repo)
                    self.stats.add(blobs_mounted=1)
                    return 0
            elif dst.has_blob(dst_repo, digest) is not None:
                holders.add(dst_repo)
                self.stats.add(blobs_present=1)
                return 0
            sent = self._transfer(src, dst, src_repo, dst_repo, digest, size, location)
            holders.add(dst_repo)
            return sent

    def _transfer(self, src: RegistryClient, dst: RegistryClient, src_repo: str, dst_repo: str, digest: str,
                  size: int, location: str | None) -> int:
        """Stream one blob source → target, retrying the whole blob on a transient failure."""
        attempt = 0
        while True:
            attempt += 1
            sent = 0

            def count(amount: int) -> None:
                nonlocal sent
                sent += amount
                self.stats.add(bytes_sent=amount)
                if self.on_bytes:
                    self.on_bytes(amount)

            try:
                with src.open_blob(src_repo, digest) as response:
                    dst.upload_blob(dst_repo, digest, response.raw, size, location, on_bytes=count)
                self.stats.add(blobs_sent=1)
                return sent
            except (RegistryHTTPError, requests.RequestException) as exc:
                retryable = not isinstance(exc, RegistryHTTPError) or exc.retryable
                if not retryable or attempt >= self.blob_attempts:
                    if isinstance(exc, RegistryHTTPError):
                        raise
                    raise RegistryHTTPError(
                        f"registry {src.host}/{src_repo}@{digest}: reading the blob failed: {exc}",
                        "the upstream connection broke; retry the run",
                        registry=src.host, repository=src_repo, reference=digest, retryable=True,
                    ) from None
                log.warning("blob %s → %s/%s failed (attempt %d of %d), retrying: %s", digest[:19], dst.host,
                            dst_repo, attempt, self.blob_attempts, getattr(exc, "message", exc))
                # A failed upload session cannot be resumed portably; start a fresh one.
                location = None
