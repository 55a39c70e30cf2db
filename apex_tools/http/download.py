"""Downloads of large upstream files into the cache: revalidated, resumed, retried, verified.

Upstream may be ``http(s)://``, ``file://`` or a plain folder (an offline mirror). The files'
records (validators, partial files, locks) are ``filecache``'s; checksums are ``checksums``'.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import requests
import urllib3

from apex_tools import __version__
from apex_tools.http.checksums import SIDECARS, Expected, Hashes, parse_sidecar, verified
from apex_tools.core.errors import DownloadError
from apex_tools.http.filecache import (
    Validators,
    artifact_lock,
    cached_validators,
    discard_partial,
    meta_path,
    open_at,
    partial_meta_path,
    partial_path,
    read_validators,
    write_validators,
)
from apex_tools.http.retry import retry_after, why
from apex_tools.core.run import ProgressFactory, null_progress
from apex_tools.core.state import fsync_path

log = logging.getLogger(__name__)

CHUNK = 1 << 20
# Transient by nature: the server asks us to come back (429, 503) or failed this once (5xx).
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504, 520, 521, 522, 523, 524})
# Read errors that mean "the connection broke", as opposed to local I/O errors (disk full).
# ``read(algo) -> (text, where it came from)``, or None when the source has no such sidecar.
SidecarReader = Callable[[str], "tuple[str, str] | None"]
NETWORK_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try: attempts per request, exponential backoff, the longest wait, timeouts."""

    tries: int = 5
    backoff: float = 1.0
    max_wait: float = 60.0
    connect_timeout: float = 10.0
    read_timeout: float = 60.0

    def delay(self, attempt: int) -> float:
        """The wait after failed attempt number ``attempt`` (1-based)."""
        return min(self.max_wait, self.backoff * 2 ** (attempt - 1))


@dataclass
class Fetched:
    """What happened to one artifact: downloaded, resumed or up to date, with numbers."""

    name: str
    path: Path
    action: str
    validators: Validators
    received: int = 0
    seconds: float = 0.0
    resumed_from: int = 0
    verified: list[str] = field(default_factory=list)
    note: str = ""

    @property
    def changed(self) -> bool:
        return self.action != "up to date"

    def detail(self) -> str:
        """One line for the summary table."""
        if not self.changed:
            return self.note
        rate = self.received / self.seconds if self.seconds > 0 else 0.0
        parts = []
        if self.resumed_from:
            parts.append(f"from {human_size(self.resumed_from)} of {human_size(self.validators.size)}")
        parts.append(f"{human_size(self.received)} in {self.seconds:.1f}s ({human_size(rate)}/s)")
        parts.append(", ".join(self.verified) if self.verified else "no checksum published")
        return "; ".join(parts)


def human_size(n: float) -> str:
    """``1536`` → ``1.5 KiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover - the loop always returns


def local_source(url: str) -> Path | None:
    """The path of a ``file://`` URL or a plain path; None for a network URL."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    if not parsed.scheme:
        return Path(url).expanduser()
    return None


def join_url(base: str, name: str) -> str:
    """``base`` (a folder URL or path, with or without a trailing slash) plus ``name``."""
    return base.rstrip("/") + "/" + name


def _content_range(response: requests.Response) -> tuple[int, int] | None:
    """``(start, total)`` of a 206 reply's ``Content-Range: bytes start-end/total``."""
    match = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", response.headers.get("Content-Range", "").strip())
    if not match:
        return None
    total = int(match.group(3)) if match.group(3) != "*" else -1
    return int(match.group(1)), total


@dataclass
class _Body:
    """One download in progress: what it must match, its running digests, what this run received."""

    expected: list[Expected]
    hashes: Hashes
    received: int = 0
    resumed_from: int = 0
    validators: Validators = field(default_factory=lambda: Validators(""))

    def begin(self, start: int, partial: Path) -> None:
        """Line the digests up with the partial file before its bytes from ``start`` on arrive."""
        if start == 0:
            self.resumed_from = 0
        elif self.resumed_from == 0:
            self.resumed_from = start
        if self.hashes.count != start:
            # Hash what an earlier run (or a restarted attempt) left in the partial file.
            self.hashes.reset()
            if start:
                self.hashes.update_from(partial)

    def add(self, chunk: bytes) -> None:
        self.hashes.update(chunk)
        self.received += len(chunk)


class _Transient(Exception):
    """An attempt failed in a way worth retrying; ``wait`` is what the server asked for, if anything.

    ``restart`` means the partial file cannot be continued and the next attempt starts from zero.
    """

    def __init__(self, problem: str, wait: float | None = None, restart: bool = False) -> None:
        super().__init__(problem)
        self.problem, self.wait, self.restart = problem, wait, restart


def default_session() -> requests.Session:
    """A session that asks for the bytes as they are (no transfer compression of multi-GB files)."""
    session = requests.Session()
    session.headers.update({"User-Agent": f"apex-tools/{__version__}", "Accept-Encoding": "identity"})
    return session


class Downloader:
    """Fetches upstream files into a cache folder; the HTTP session and the waiting are injectable."""

    def __init__(
        self,
        session: requests.Session | None = None,
        policy: RetryPolicy | None = None,
        progress: ProgressFactory = null_progress,
        sleep: Callable[[float], None] = time.sleep,
        require_checksum: bool = True,
    ) -> None:
        self.session = session or default_session()
        # A file nothing verified is never cached as good: it needs a sidecar or a pinned sha256
        # (only benchmarks of the bare transfer turn this off).
        self.require_checksum = require_checksum
        self.policy = policy or RetryPolicy()
        self.progress = progress
        self.sleep = sleep

    # ---- check and plan -------------------------------------------------------------------

    def unreachable(self, url: str) -> str | None:
        """Why ``url``'s server does not answer at all (one HEAD), or None when it answers anything."""
        if local_source(url) is not None:
            return None
        try:
            self.session.head(url, allow_redirects=False, timeout=self._timeout()).close()
        except NETWORK_ERRORS as exc:
            return why(exc)
        return None

    def plan(self, url: str, dest: Path, *, offline: bool = False, force: bool = False) -> str | None:
        """Why ``dest`` would be fetched, or None when it is current (a conditional HEAD at most)."""
        cached = cached_validators(dest)
        if offline:
            if cached or dest.is_file():
                return None
            return f"{dest.name}: not cached and --no-fetch is set: a real run fails (it would come from {url})"
        if force:
            return f"{dest.name}: download again from {url} (--force)"
        if cached is None:
            return f"{dest.name}: download from {url} (not cached)"
        if cached.url != url:
            return f"{dest.name}: download from {url} (cached from {cached.url})"
        source = local_source(url)
        if source is not None:
            stamp = _local_stamp(source)
            return None if stamp == cached.etag else f"{dest.name}: copy from {source} (source changed)"
        try:
            response = self.session.head(url, headers=_conditional(cached), allow_redirects=True, timeout=self._timeout())
        except NETWORK_ERRORS as exc:
            return f"{dest.name}: revalidate with {url} (unreachable now: {why(exc)})"
        if response.status_code == 304:
            return None
        if response.ok:
            return f"{dest.name}: download from {url} ({_what_changed(cached, response)})"
        return f"{dest.name}: revalidate with {url} (HEAD answered HTTP {response.status_code})"

    # ---- fetch ----------------------------------------------------------------------------

    def fetch(
        self,
        url: str,
        dest: Path,
        *,
        pinned: Mapping[str, str] | None = None,
        offline: bool = False,
        force: bool = False,
    ) -> Fetched:
        """Make ``dest`` hold the current, verified upstream ``url``; raise DownloadError if it can't."""
        dest = Path(dest)
        with artifact_lock(dest):
            # Read the cache only under the lock: another run may have just finished it.
            cached = None if force else cached_validators(dest)
            if offline:
                return self._offline(url, dest, cached, pinned or {})
            source = local_source(url)
            if source is not None:
                return self._fetch_local(source, url, dest, cached, pinned or {})
            return self._fetch_http(url, dest, cached, pinned or {})

    def _offline(self, url: str, dest: Path, cached: Validators | None, pinned: Mapping[str, str]) -> Fetched:
        if cached is not None:
            return Fetched(dest.name, dest, "up to date", cached, note="cached; not revalidated (--no-fetch)")
        if dest.is_file():
            # Put there by hand, or recorded unverified: good only when it matches a pinned digest.
            expected = [Expected(a, v.lower(), "pinned in config") for a, v in pinned.items() if v]
            if not expected and self.require_checksum:
                raise DownloadError(f"{dest} has no verified download record and --no-fetch forbids fetching it",
                                    "pin its sha256 in fetch.<artifact>_sha256, or run once without --no-fetch")
            hashes = Hashes.checking(expected)
            hashes.update_from(dest)
            for e, got in hashes.mismatches(expected)[:1]:
                raise DownloadError(f"{dest}: {e.algo} mismatch: expected {e.hexdigest} ({e.source}), got {got}",
                                    "the file is not the pinned one: delete it, or fix fetch.<artifact>_sha256")
            st = dest.stat()
            final = Validators(url, size=st.st_size, digests={e.algo: e.hexdigest for e in expected},
                               mtime_ns=st.st_mtime_ns)
            write_validators(meta_path(dest), final)
            return Fetched(dest.name, dest, "up to date", final, note="present; " + ", ".join(verified(expected)))
        raise DownloadError(
            f"{dest.name} is not cached in {dest.parent} and --no-fetch forbids downloading it from {url}",
            "run once without --no-fetch (or APEX_NO_FETCH=0), or put the file there by hand",
        )

    def _fetch_http(self, url: str, dest: Path, cached: Validators | None, pinned: Mapping[str, str]) -> Fetched:
        if cached is not None and cached.url != url:
            # Validators only mean something to the server that issued them.
            cached = None
        mismatches: list[tuple[Expected, str]] = []
        for attempt in (1, 2):
            started = time.monotonic()
            # A second attempt (after a checksum mismatch) starts from zero, unconditionally.
            outcome = self._transfer(url, dest, cached if attempt == 1 else None, fresh=attempt > 1, pinned=pinned)
            if outcome is None:
                assert cached is not None
                log.info("%s: up to date (upstream answered 304 Not Modified)", dest.name)
                return Fetched(dest.name, dest, "up to date", cached, note="up to date (304 Not Modified)")
            bad = outcome.hashes.mismatches(outcome.expected)
            if not bad:
                checked = {e.algo: e.hexdigest for e in outcome.expected}
                final = self._commit(dest, replace(outcome.validators, digests=checked))
                action = "resumed" if outcome.resumed_from else "downloaded"
                log.info("%s: %s, %s", dest.name, action, human_size(outcome.received))
                return Fetched(dest.name, dest, action, final, outcome.received, time.monotonic() - started,
                               outcome.resumed_from, verified(outcome.expected))
            mismatches += bad
            discard_partial(dest)
            log.warning("%s: %s mismatch (expected %s, got %s); downloading once more", dest.name,
                        bad[0][0].algo, bad[0][0].hexdigest, bad[0][1])
        first, second = mismatches[0], mismatches[-1]
        raise DownloadError(
            f"{url}: {first[0].algo} mismatch twice: expected {first[0].hexdigest} ({first[0].source}), "
            f"got {first[1]} then {second[1]}",
            "upstream's file or its checksum is wrong or being replaced; try again later, or check the pinned "
            "hash in fetch.*_sha256",
        )

    def _transfer(
        self, url: str, dest: Path, cached: Validators | None, *, fresh: bool, pinned: Mapping[str, str]
    ) -> _Body | None:
        """Stream ``url`` into the partial file, resuming and retrying; None on 304 Not Modified."""
        partial, partial_meta = partial_path(dest), partial_meta_path(dest)
        resuming = None if fresh else read_validators(partial_meta)
        if resuming is None or resuming.url != url or not partial.exists():
            discard_partial(dest)
            resuming = None
        body: _Body | None = None
        attempt = 0
        while True:
            attempt += 1
            # Revalidate until a body arrives: a 5xx before it says nothing about a change.
            headers = _conditional(cached) if body is None else {}
            offset = partial.stat().st_size if resuming and partial.exists() else 0
            if offset and resuming and resuming.if_range():
                headers.update({"Range": f"bytes={offset}-", "If-Range": resuming.if_range()})
            try:
                response = self.session.get(url, headers=headers, stream=True, timeout=self._timeout())
            except NETWORK_ERRORS as exc:
                problem, wait = f"cannot connect ({why(exc)})", None
            else:
                with response:
                    try:
                        if self._check_status(url, response) == 304:
                            discard_partial(dest)
                            return None
                        if body is None:
                            # Learn which digests to check before the body starts: hashing costs
                            # throughput, so only what will be checked is hashed.
                            expected = self._expected(dest.name, pinned, self._http_sidecar(url, dest.name),
                                                      "upstream's checksum file is malformed or lists other files; "
                                                      "report it upstream")
                            body = _Body(expected, Hashes.checking(expected))
                        start, total, resuming = _accept(url, response, offset if "Range" in headers else 0, resuming)
                        write_validators(partial_meta, resuming)
                        body.begin(start, partial)
                        self._write_body(response, partial, start, total, body, dest.name)
                        body.validators = resuming
                        return body
                    except _Transient as exc:
                        problem, wait = exc.problem, exc.wait
                        if exc.restart:
                            discard_partial(dest)
                            resuming = None
            if attempt >= self.policy.tries:
                kept = partial.stat().st_size if partial.exists() else 0
                raise DownloadError(
                    f"{url}: {problem}; gave up after {attempt} tries",
                    "check that upstream.images_url is reachable from here; raise fetch.tries or fetch.max_wait "
                    "for a flaky link" + (f" (the {human_size(kept)} received are kept and resumed next time)"
                                          if kept else ""),
                )
            delay = self.policy.delay(attempt) if wait is None else wait
            log.warning("%s: %s; trying again in %.1fs (%d/%d)", dest.name, problem, delay, attempt,
                        self.policy.tries)
            self.sleep(delay)

    def _check_status(self, url: str, response: requests.Response) -> int:
        """Pass 200/206/304 through, turn retryable statuses into _Transient, fail on the rest."""
        code = response.status_code
        if code in (200, 206, 304, 416):
            return code
        problem = f"HTTP {code} {response.reason}"
        if code in RETRY_STATUSES:
            asked = retry_after(response)
            if asked is not None and asked > self.policy.max_wait:
                raise DownloadError(
                    f"{url}: {problem}, and the server asks to come back in {asked:.0f}s",
                    f"try again later, or raise fetch.max_wait above {asked:.0f} to wait for it",
                )
            raise _Transient(problem, asked)
        hint = ("check upstream.images_url and the OpenStack version in the deploy settings"
                if code in (403, 404, 410) else "check upstream.images_url")
        raise DownloadError(f"{url}: HTTP {code} {response.reason}", hint)

    def _write_body(
        self, response: requests.Response, partial: Path, start: int, total: int, body: _Body, name: str
    ) -> None:
        """Append the body at ``start``; a broken or short body is a _Transient (resumable)."""
        size = total if total >= 0 else None
        with self.progress(f"downloading {name}", size) as bar, open_at(partial, start) as out:
            bar.advance(start)
            while True:
                try:
                    # read1: whatever has arrived, so a stall loses nothing already received.
                    chunk = response.raw.read1(CHUNK)
                except NETWORK_ERRORS as exc:
                    raise _Transient(f"connection dropped after {human_size(body.hashes.count)} "
                                     f"({why(exc)})") from None
                if not chunk:
                    break
                out.write(chunk)
                body.add(chunk)
                bar.advance(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        if total >= 0 and body.hashes.count != total:
            raise _Transient(f"body ended at {human_size(body.hashes.count)} of {human_size(total)}")

    def _expected(self, name: str, pinned: Mapping[str, str], read_sidecar: SidecarReader, hint: str) -> list[Expected]:
        """Digests to check: a pinned one from config, then the source's sidecars.

        A sidecar must parse as a checksum of ``name``: an HTML page (a mirror's soft 404) or
        garbage is an error, not "no checksum", unless a pinned digest makes it irrelevant; and
        with neither a sidecar nor a pin the file cannot be verified, which is an error too."""
        expected = [Expected(algo, value.lower(), "pinned in config") for algo, value in pinned.items() if value]
        for algo in SIDECARS:
            found = read_sidecar(algo)
            if found is None:
                continue
            text, where = found
            digest = parse_sidecar(text, name, algo)
            if digest is None:
                what = "is an HTML page, not a checksum file" if "<html" in text[:4096].lower() else \
                    f"holds no {algo} digest for {name}"
                if pinned:
                    log.warning("%s %s; relying on the pinned digest", where, what)
                    continue
                raise DownloadError(f"{where} {what}", hint + "; or pin the file's sha256 in fetch.<artifact>_sha256")
            expected.append(Expected(algo, digest, where))
        if not expected and self.require_checksum:
            raise DownloadError(
                f"{name}: upstream publishes no checksum ({', '.join('.' + a for a in SIDECARS)}) and none is pinned; "
                "an unverified file is never used",
                "pin its sha256 in fetch.<artifact>_sha256 (fetch.overcloud_sha256, fetch.ipa_sha256, "
                "fetch.undercloud_sha256)")
        return expected

    def _http_sidecar(self, url: str, name: str) -> SidecarReader:
        def read(algo: str) -> tuple[str, str] | None:
            text = self._small_get(f"{url}.{algo}")
            return None if text is None else (text, f"{url}.{algo}")

        return read

    def _small_get(self, url: str) -> str | None:
        """A small text file (a checksum sidecar), retried; None when upstream has none."""
        for attempt in range(1, self.policy.tries + 1):
            try:
                response = self.session.get(url, timeout=self._timeout())
                if response.status_code in (403, 404, 410):
                    return None
                self._check_status(url, response)
                return response.text
            except NETWORK_ERRORS as exc:
                problem, wait = f"cannot fetch ({why(exc)})", None
            except _Transient as exc:
                problem, wait = exc.problem, exc.wait
            if attempt == self.policy.tries:
                raise DownloadError(f"{url}: {problem}; gave up after {attempt} tries",
                                    "check that upstream.images_url is reachable; raise fetch.tries")
            self.sleep(self.policy.delay(attempt) if wait is None else wait)
        return None  # pragma: no cover - the loop returns or raises

    def _commit(self, dest: Path, validators: Validators) -> Validators:
        """Rename the verified partial into place and record its validators beside it."""
        os.replace(partial_path(dest), dest)
        st = dest.stat()
        final = replace(validators, size=st.st_size, mtime_ns=st.st_mtime_ns)
        write_validators(meta_path(dest), final)
        with contextlib.suppress(FileNotFoundError):
            partial_meta_path(dest).unlink()
        fsync_path(dest.parent)
        return final

    # ---- local sources (file:// and folders) ----------------------------------------------

    def _fetch_local(
        self, source: Path, url: str, dest: Path, cached: Validators | None, pinned: Mapping[str, str]
    ) -> Fetched:
        if not source.is_file():
            raise DownloadError(f"{dest.name}: {source} does not exist (from {url})",
                                "check upstream.images_url: it points at a local folder without this file")
        stamp = _local_stamp(source)
        if cached is not None and cached.etag == stamp and cached.url == url:
            return Fetched(dest.name, dest, "up to date", cached, note="up to date (local source unchanged)")
        def read_sidecar(algo: str) -> tuple[str, str] | None:
            sidecar = source.with_name(f"{source.name}.{algo}")
            return (sidecar.read_bytes()[:1 << 16].decode("utf-8", "replace"), str(sidecar)) if sidecar.is_file() else None

        expected = self._expected(source.name, pinned, read_sidecar, "fix or remove the checksum file")
        started = time.monotonic()
        hashes = Hashes.checking(expected)
        size = source.stat().st_size
        discard_partial(dest)
        with source.open("rb") as src, self.progress(f"copying {dest.name}", size) as bar, \
                open_at(partial_path(dest), 0) as out:
            while chunk := src.read(CHUNK):
                out.write(chunk)
                hashes.update(chunk)
                bar.advance(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        for e, got in hashes.mismatches(expected)[:1]:
            discard_partial(dest)
            raise DownloadError(f"{source}: {e.algo} mismatch: expected {e.hexdigest} ({e.source}), "
                                f"got {got}", "the mirror's file or its checksum is wrong")
        validators = Validators(url, etag=stamp, size=size, digests={e.algo: e.hexdigest for e in expected})
        final = self._commit(dest, validators)
        return Fetched(dest.name, dest, "downloaded", final, size, time.monotonic() - started,
                       verified=verified(expected))

    def _timeout(self) -> tuple[float, float]:
        return (self.policy.connect_timeout, self.policy.read_timeout)


def _local_stamp(source: Path) -> str:
    # A local mirror's own size and mtime, compared only with themselves, never with ours.
    st = source.stat()
    return f"local:{st.st_size}:{st.st_mtime_ns}"


def _conditional(cached: Validators | None) -> dict[str, str]:
    """``If-None-Match`` / ``If-Modified-Since`` from the cached version's validators."""
    headers = {}
    if cached and cached.etag and not cached.etag.startswith("local:"):
        headers["If-None-Match"] = cached.etag
    if cached and cached.last_modified:
        headers["If-Modified-Since"] = cached.last_modified
    return headers


def _what_changed(cached: Validators, response: requests.Response) -> str:
    etag, modified = response.headers.get("ETag", ""), response.headers.get("Last-Modified", "")
    if etag and cached.etag and etag != cached.etag:
        return f"upstream changed: ETag {cached.etag} → {etag}"
    if modified and cached.last_modified and modified != cached.last_modified:
        return f"upstream changed: Last-Modified {cached.last_modified} → {modified}"
    return "upstream cannot be revalidated"


def _accept(url: str, response: requests.Response, offset: int, started_with: Validators | None
            ) -> tuple[int, int, Validators]:
    """Where this reply's body starts and the full size; a 206 must start exactly at ``offset``."""
    headers = response.headers
    if response.status_code == 206:
        found = _content_range(response)
        if found is None or found[0] != offset or (started_with and started_with.size not in (-1, found[1])):
            # Not the continuation we asked for: throw the partial away and start over.
            raise _Transient(f"server resumed at the wrong place (Content-Range {headers.get('Content-Range')!r}, "
                             f"wanted byte {offset}); starting over", 0.0, restart=True)
        base = started_with or Validators(url)
        return offset, found[1], replace(base, etag=headers.get("ETag", base.etag),
                                         last_modified=headers.get("Last-Modified", base.last_modified),
                                         size=found[1])
    if response.status_code == 416:
        raise _Transient("server refused the resume range (416); starting over", 0.0, restart=True)
    length = int(headers.get("Content-Length", -1) or -1)
    return 0, length, Validators(url, headers.get("ETag", ""), headers.get("Last-Modified", ""), length)
