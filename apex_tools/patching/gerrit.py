"""A small anonymous Gerrit REST client: change lookup and patch download, cached by revision.

Cache layout (under ``cache_dir``): ``changes/<project~branch~Change-Id>.json`` holds the last
answer of the change lookup (so an offline run knows the revision), ``patches/<revision>.patch``
the decoded patch of that revision (a revision's patch never changes).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests
from requests.adapters import HTTPAdapter

from apex_tools.core.errors import GerritError
from apex_tools.core.render_safety import shown
from apex_tools.http.retry import why
from apex_tools.http.retry import CappedRetry
from apex_tools.core.state import atomic_write

log = logging.getLogger(__name__)

# Gerrit prefixes every JSON answer with this line to defeat cross-site script inclusion.
XSSI_PREFIX = ")]}'"
RETRY_STATUSES = (429, 500, 502, 503, 504)


class GerritUnreachable(GerritError):
    """Gerrit itself could not be reached (no answer at all); ``reason`` says why in a few words."""

    def __init__(self, message: str, hint: str, url: str, reason: str) -> None:
        super().__init__(message, hint)
        self.url, self.reason = url, reason


@dataclass(frozen=True)
class Change:
    """A Gerrit change as found on one project and branch, at its current revision."""

    project: str
    branch: str
    change_id: str
    status: str
    revision: str
    submitted: datetime | None = None
    patch_set: int = 0  # Gerrit's patch set number of ``revision`` (revisions.<sha>._number)
    commit: str = ""  # the git commit of ``revision`` (Gerrit names a revision by its commit)

    @property
    def triplet(self) -> str:
        """Gerrit's ``project~branch~Change-Id`` identifier, URL-quoted."""
        return triplet(self.project, self.branch, self.change_id)


def triplet(project: str, branch: str, change_id: str) -> str:
    """``openstack%2Fnova~stable%2Fqueens~I...``."""
    return f"{quote(project, safe='')}~{quote(branch, safe='')}~{change_id}"


def parse_gerrit_time(text: str | None) -> datetime | None:
    """Gerrit's ``2018-06-11 15:23:55.000000000`` (UTC, nanoseconds) as an aware datetime."""
    if not text:
        return None
    return datetime.strptime(text.split(".")[0], "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)


def strip_xssi(text: str) -> str:
    """Drop Gerrit's ``)]}'`` first line from a JSON answer."""
    return text[len(XSSI_PREFIX):].lstrip("\r\n") if text.startswith(XSSI_PREFIX) else text


REVISION = re.compile(r"^[0-9a-f]{40}$")
STATUSES = ("NEW", "MERGED", "ABANDONED", "DRAFT")


def _change_from(data: Any, project: str, branch: str, change_id: str) -> Change:
    """The change in Gerrit's answer, which must be about the change asked for.

    The revision becomes a cache file name and Dockerfile text, so it must be 40 hex digits;
    a project, branch or Change-Id other than the requested ones is refused, not taken."""
    what = f"change {change_id} ({project}, {branch})"
    hint = ("the server at gerrit.url is not answering like Gerrit (or the answer was tampered with): "
            "use an https gerrit.url you trust")
    if not isinstance(data, dict):
        raise GerritError(f"{what}: Gerrit's answer is not a JSON object", hint)
    revision = data.get("current_revision")
    if not revision:
        raise GerritError(
            f"{what}: Gerrit's answer has no current_revision",
            "the Gerrit server must support ?o=CURRENT_REVISION (any Gerrit since 2.x does)",
        )
    if not isinstance(revision, str) or not REVISION.match(revision):
        raise GerritError(f"{what}: Gerrit's current_revision {shown(None, revision)} is not 40 hex digits", hint)
    asked = {"project": project, "branch": branch.removeprefix("refs/heads/"), "change_id": change_id}
    for key, want in asked.items():
        got = data.get(key, want)
        if isinstance(got, str) and key == "branch":
            got = got.removeprefix("refs/heads/")
        if got != want:
            raise GerritError(f"{what}: Gerrit answered for {key} {shown(None, got)}, not the requested {want!r}",
                              hint)
    status = data.get("status", "NEW")
    if status not in STATUSES:
        raise GerritError(f"{what}: Gerrit's status {shown(None, status)} is none of {', '.join(STATUSES)}", hint)
    try:
        submitted = parse_gerrit_time(data.get("submitted"))
    except (TypeError, ValueError, AttributeError):
        raise GerritError(f"{what}: Gerrit's submitted time {shown(None, data.get('submitted'))} is not "
                          "'YYYY-MM-DD hh:mm:ss'", hint) from None
    patch_set, commit = _patch_set_of(data, revision, what, hint)
    return Change(project=project, branch=branch, change_id=change_id, status=status, revision=revision,
                  submitted=submitted, patch_set=patch_set, commit=commit)


def _patch_set_of(data: dict[str, Any], revision: str, what: str, hint: str) -> tuple[int, str]:
    """The patch set number and commit of ``revision`` from ``revisions.<revision>``.

    The number goes into provenance, so it must be a positive integer; the commit is the
    revision unless the answer names one (``commit`` as a string, or a CommitInfo's ``commit``)."""
    revisions = data.get("revisions")
    info = revisions.get(revision) if isinstance(revisions, dict) else None
    if not isinstance(info, dict):
        raise GerritError(f"{what}: Gerrit's answer has no revisions.{revision} (its patch set)",
                          "the Gerrit server must support ?o=CURRENT_REVISION (any Gerrit since 2.x does)")
    number = info.get("_number")
    # bool is an int in Python: True is no patch set number.
    if not isinstance(number, int) or isinstance(number, bool) or number < 1:
        raise GerritError(f"{what}: Gerrit's patch set number {shown(None, number)} of revision {revision} "
                          "is not a positive integer", hint)
    commit = info.get("commit", revision)
    commit = commit.get("commit", revision) if isinstance(commit, dict) else commit
    if not isinstance(commit, str) or not REVISION.match(commit):
        raise GerritError(f"{what}: Gerrit's commit {shown(None, commit)} of revision {revision} "
                          "is not 40 hex digits", hint)
    return number, commit


def session_with_retries(tries: int) -> requests.Session:
    """A session retrying GETs on connection errors, 429 (honouring Retry-After) and 5xx."""
    session = requests.Session()
    retry = CappedRetry(
        total=tries - 1,
        connect=tries - 1,
        read=tries - 1,
        status=tries - 1,
        backoff_factor=0.5,
        status_forcelist=RETRY_STATUSES,
        allowed_methods=frozenset({"GET", "HEAD"}),
        respect_retry_after_header=True,
        raise_on_status=False,
    )
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class GerritClient:
    """Anonymous REST access to one Gerrit; ``offline`` answers from the cache only."""

    def __init__(
        self,
        url: str,
        cache_dir: Path,
        *,
        timeout: float = 30.0,
        tries: int = 4,
        offline: bool = False,
        write_cache: bool = True,
        session: requests.Session | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.cache_dir = Path(cache_dir)
        self.timeout = timeout
        self.offline = offline
        # A dry run reads the cache but never writes it.
        self.write_cache = write_cache
        self.session = session or session_with_retries(tries)

    def _get(self, path: str, what: str) -> requests.Response:
        url = f"{self.url}/{path}"
        try:
            response = self.session.get(url, timeout=self.timeout)
        except (requests.ConnectionError, requests.Timeout) as exc:
            log.debug("Gerrit request %s failed: %s", url, exc)
            raise GerritUnreachable(
                f"{what}: cannot reach Gerrit at {self.url}: {why(exc)}",
                "check gerrit.url and the network, or set no_fetch to use the cached patches",
                self.url, why(exc),
            ) from None
        except requests.RequestException as exc:
            raise GerritError(
                f"{what}: cannot reach Gerrit at {self.url}: {exc.__class__.__name__}: {exc}",
                "check gerrit.url and the network, or set no_fetch to use the cached patches",
            ) from None
        return response

    def _change_cache(self, project: str, branch: str, change_id: str) -> Path:
        return self.cache_dir / "changes" / f"{triplet(project, branch, change_id)}.json"

    def change(self, project: str, branch: str, change_id: str) -> Change:
        """Look ``change_id`` up on ``project`` and ``branch``, with its current revision."""
        what = f"change {change_id} (project {project}, branch {branch})"
        cache = self._change_cache(project, branch, change_id)
        if self.offline:
            try:
                data = json.loads(cache.read_text())
            except (OSError, ValueError):
                raise GerritError(
                    f"{what}: not in the cache {cache.parent} and no_fetch is set",
                    "run once without no_fetch so the change is looked up and cached",
                ) from None
            return _change_from(data, project, branch, change_id)
        response = self._get(f"changes/{triplet(project, branch, change_id)}?o=CURRENT_REVISION", what)
        if response.status_code == 404:
            raise GerritError(
                f"{what}: not found on {self.url} ({response.text.strip() or 'Not found'})",
                "check the change-id, its project and its branch (branch defaults to master or "
                "stable/<os_version>; give `branch:` in the patch entry for another)",
            )
        self._raise_for(response, what)
        try:
            data = json.loads(strip_xssi(response.text))
        except ValueError:
            raise GerritError(f"{what}: Gerrit's answer is not JSON: {response.text[:120]!r}",
                              "check that gerrit.url points at a Gerrit server") from None
        change = _change_from(data, project, branch, change_id)
        if self.write_cache:
            atomic_write(cache, json.dumps(data, indent=1, sort_keys=True) + "\n")
        return change

    def patch(self, change: Change) -> str:
        """The patch of ``change``'s current revision (decoded), from the cache when there."""
        cache = self.cache_dir / "patches" / f"{change.revision}.patch"
        if cache.is_file():
            log.debug("patch %s@%s: cached", change.change_id, change.revision)
            return cache.read_bytes().decode("utf-8", "surrogateescape")
        what = f"patch of change {change.change_id} revision {change.revision} ({change.project})"
        if self.offline:
            raise GerritError(f"{what}: not in the cache {cache.parent} and no_fetch is set",
                              "run once without no_fetch so the patch is downloaded and cached")
        log.info("patch %s@%s: downloading", change.change_id, change.revision)
        response = self._get(f"changes/{change.triplet}/revisions/{change.revision}/patch", what)
        self._raise_for(response, what)
        try:
            raw = base64.b64decode(response.content, validate=False)
        except (binascii.Error, ValueError):
            raise GerritError(f"{what}: the answer is not base64", "check that gerrit.url points at Gerrit") from None
        if self.write_cache:
            atomic_write(cache, raw)
        return raw.decode("utf-8", "surrogateescape")

    def _raise_for(self, response: requests.Response, what: str) -> None:
        if response.ok:
            return
        body = response.text.strip().splitlines()[0][:200] if response.text.strip() else ""
        hint = ("Gerrit is failing or throttling; retry later" if response.status_code in RETRY_STATUSES
                else "check gerrit.url; anonymous read access is needed")
        raise GerritError(f"{what}: Gerrit answered HTTP {response.status_code} {body}".rstrip(), hint)
