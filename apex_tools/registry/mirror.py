"""Copy images between registries, preserving digests, moving each blob at most once per run.

Looking: the target's manifest HEAD first; when the tag is there, one HEAD upstream tells
whether it is the same digest ("already there": one HEAD each side). Otherwise the source
manifest is fetched straight away (a GET by tag gives the digest from the bytes, no HEAD).

Copying, with every manifest known: each distinct blob of a target registry is sent once, to
the first (largest) image that needs it, largest blobs first; each other image needing it
mounts it from there (one POST answering 201). A send starts with a POST that mounts the blob
from the receiving repository itself: 201 means it is there already (no HEAD first), 202
opens the upload the bytes then stream into. Last, each image's manifests are PUT, children of
a manifest list / OCI index first. One pool of workers runs it all, so small images' round
trips overlap the large images' transfers.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import requests

from apex_tools.core.errors import ApexError
from apex_tools.core.reference import ImageRef
from apex_tools.http.retry import why
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


def failure_summary(results: Sequence[CopyResult], named: int = 3) -> str:
    """One line naming what failed: how many, each registry and root cause, the first few images.

    "6 of 6 images failed: registry 127.0.0.1:5000: connection refused (svc0, svc1, svc2 and 3 more)"
    """
    failed = [r for r in results if r.status == FAILED]
    groups: dict[str, list[str]] = {}
    for result in failed:
        error = result.error
        if isinstance(error, RegistryHTTPError):
            key = f"registry {error.registry}: {error.cause.splitlines()[0]}"
        else:
            key = result.detail
        groups.setdefault(key, []).append(result.job.target.repository.rsplit("/", 1)[-1])
    parts = [f"{why} ({', '.join(names[:named])}{f' and {len(names) - named} more' if len(names) > named else ''})"
             for why, names in sorted(groups.items(), key=lambda kv: -len(kv[1]))]
    return f"{len(failed)} of {len(results)} images failed: " + "; ".join(parts)


ClientFor = Callable[[str], RegistryClient]
# Requests in flight per image job (docker push sends 5 layers at once, tripleo's uploader 4):
# the many small images are latency-bound, so the pool is wider than the image count.
WORKERS_PER_JOB = 4
MAX_WORKERS = 32


@dataclass
class _Pending:
    """An image to copy: its job, its manifest, the child manifests the target lacks, and the
    distinct blobs of all of them (digest, size)."""

    job: CopyJob
    manifest: Manifest
    children: list[Manifest]
    blobs: list[tuple[str, int]]

    @property
    def size(self) -> int:
        return sum(size for _, size in self.blobs)


@dataclass
class _Send:
    """A blob to get into a target registry once: the repository that receives it first."""

    src: RegistryClient
    dst: RegistryClient
    src_repo: str
    dst_repo: str
    digest: str
    size: int
    future: Future[int] | None = None


class Mirror:
    """Copies images with ``jobs`` images' worth of workers; remembers which blobs each target
    repository has."""

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
        self._guard = threading.Lock()

    def copy_all(self, jobs: Sequence[CopyJob]) -> list[CopyResult]:
        """Copy every job (in parallel); results in the jobs' order. Failures are results, not raised."""
        if not jobs:
            return []
        workers = min(MAX_WORKERS, self.jobs * WORKERS_PER_JOB)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mirror") as pool:
            looked = list(pool.map(lambda job: self._guarded(job, self._look), jobs))
            pending = sorted((item for item in looked if isinstance(item, _Pending)), key=lambda p: -p.size)
            sends = self._plan(pending)
            for send in sorted(sends.values(), key=lambda s: -s.size):
                send.future = pool.submit(self._send, send)
            # Queued after every send: a worker takes an image only once each send has started,
            # so an image waiting for a send never holds up the send itself.
            finishing = [pool.submit(self._guarded, p.job, lambda _, p=p: self._finish(p, sends)) for p in pending]
            copied = {id(p.job): f.result() for p, f in zip(pending, finishing)}
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

    @staticmethod
    def _not_found(source: ImageRef) -> RegistryHTTPError:
        return RegistryHTTPError(
            f"registry {source}: image not found upstream",
            "check upstream.registry/namespace/tag, or that the image exists for this release",
            registry=source.registry, repository=source.repository, reference=source.reference, status=404,
        )

    def _look(self, job: CopyJob) -> CopyResult | _Pending:
        """The target's HEAD (unless the job knows); when the tag is there, the source's HEAD (an
        equal digest is "already there"); else the source manifest and its children to copy."""
        src = self.client_for(job.source.registry)
        dst = self.client_for(job.target.registry)
        source, target = job.source, job.target
        digest = job.source_digest
        if job.target_checked:
            present = job.target_digest
        else:
            found = dst.head_manifest(target.repository, target.reference)
            present = found[0] if found else None
        if present is not None and digest is None:
            head = src.head_manifest(source.repository, source.reference)
            if head is None:
                raise self._not_found(source)
            digest = head[0]
        if present is not None and present == digest:
            return CopyResult(job, ALREADY_THERE, digest, "digest matches")
        try:
            manifest = src.get_manifest(source.repository, digest or source.reference)
        except RegistryHTTPError as exc:
            if exc.status == 404:
                raise self._not_found(source) from None
            raise
        children = []
        for child in manifest.children():
            if dst.head_manifest(target.repository, child["digest"]) is None:
                children.append(src.get_manifest(source.repository, child["digest"]))
        blobs: dict[str, int] = {}
        for each in [*children, manifest]:
            blobs.update((b["digest"], int(b.get("size", 0))) for b in each.blobs())
        return _Pending(job, manifest, children, list(blobs.items()))

    def _plan(self, pending: list[_Pending]) -> dict[tuple[str, str], _Send]:
        """Each distinct blob per target registry, received first by the largest image needing it."""
        sends: dict[tuple[str, str], _Send] = {}
        for item in pending:
            src = self.client_for(item.job.source.registry)
            dst = self.client_for(item.job.target.registry)
            for digest, size in item.blobs:
                sends.setdefault((dst.host, digest), _Send(src, dst, item.job.source.repository,
                                                           item.job.target.repository, digest, size))
        return sends

    def _send(self, send: _Send) -> int:
        return self._place(send.src, send.dst, send.src_repo, send.dst_repo, send.digest, send.size)

    def _finish(self, pending: _Pending, sends: dict[tuple[str, str], _Send]) -> CopyResult:
        """Wait for the image's blobs, mount the ones another image received, PUT its manifests."""
        job, manifest = pending.job, pending.manifest
        src = self.client_for(job.source.registry)
        dst = self.client_for(job.target.registry)
        sent = 0
        for digest, size in pending.blobs:
            send = sends[(dst.host, digest)]
            assert send.future is not None
            moved = send.future.result()  # a failed send fails every image that needs the blob
            if send.dst_repo == job.target.repository:
                sent += moved
            else:
                sent += self._place(src, dst, job.source.repository, job.target.repository, digest, size,
                                    mount_from=send.dst_repo)
        for child in pending.children:
            dst.put_manifest(job.target.repository, child.digest, child)
        dst.put_manifest(job.target.repository, job.target.reference, manifest)
        detail = f"{sent} bytes sent" if sent else "no blob moved"
        if manifest.is_index:
            detail += f", {len(manifest.children())} platform manifests"
        log.debug("mirrored %s → %s (%s)", job.source, job.target, detail)
        return CopyResult(job, MIRRORED, manifest.digest, detail, bytes_sent=sent)

    def _place(self, src: RegistryClient, dst: RegistryClient, src_repo: str, dst_repo: str, digest: str,
               size: int, mount_from: str | None = None) -> int:
        """Make ``dst_repo`` hold ``digest``: known, mounted, present, or sent; bytes sent.

        The POST mounts from a repository known to hold the blob, from the source repository on
        the same registry, or else from ``dst_repo`` itself (201: already there); a 202 opens the
        upload the blob is then streamed into.
        """
        key = (dst.host, digest)
        with self._guard:
            holders = self._holders.setdefault(key, set())
            if dst_repo in holders:
                return 0
            known = sorted(holders)
        if mount_from is None:
            mount_from = known[0] if known else src_repo if src.host == dst.host and src_repo != dst_repo \
                else dst_repo
        location = dst.mount_blob(dst_repo, digest, mount_from)
        if location is None:
            self.stats.add(**{"blobs_present" if mount_from == dst_repo else "blobs_mounted": 1})
            sent = 0
        else:
            sent = self._transfer(src, dst, src_repo, dst_repo, digest, size, location)
        with self._guard:
            self._holders[key].add(dst_repo)
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
                    cause = f"reading the blob failed: {why(exc).lower()}"
                    raise RegistryHTTPError(
                        f"registry {src.host}/{src_repo}@{digest}: {cause}", "the upstream connection broke; retry "
                        "the run", registry=src.host, repository=src_repo, reference=digest, retryable=True,
                        cause=cause,
                    ) from None
                log.warning("blob %s → %s/%s failed (attempt %d of %d), retrying: %s", digest[:19], dst.host,
                            dst_repo, attempt, self.blob_attempts, getattr(exc, "message", exc))
                # A failed upload session cannot be resumed portably; start a fresh one.
                location = None
