"""A registry HTTP API v2 client on ``requests``: auth, manifests, blobs, listings, retries.

One ``RegistryClient`` talks to one registry. Its TLS mode is set explicitly (``verify``,
``no-verify`` or ``http``), never probed. Requests whose body can be replayed are retried
on connection errors, 5xx and 429 (honouring ``Retry-After``); a streamed blob upload cannot
be replayed, so its caller retries the whole blob (``RegistryHTTPError.retryable``).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any, Protocol
from urllib.parse import urljoin

import requests
from requests.adapters import HTTPAdapter

from apex_tools.core.errors import RegistryError
from apex_tools.http.retry import MAX_WAIT, retry_after, why
from apex_tools.registry.auth import Challenge, Credentials, TokenCache, fetch_token, refuse_credentials

log = logging.getLogger(__name__)

TLS_MODES = ("verify", "no-verify", "http")
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST_TYPES = (DOCKER_MANIFEST, DOCKER_LIST, OCI_MANIFEST, OCI_INDEX)
INDEX_TYPES = (DOCKER_LIST, OCI_INDEX)
CHUNK = 1 << 20
# A registry that refuses connections (or drops them) is retried this long, then given up on
# for the rest of the run: every later request fails at once with the same cause.
GIVE_UP = 8.0
# Connecting to a registry on the local network takes milliseconds; reads may take long.
CONNECT_TIMEOUT = 5.0


class RegistryHTTPError(RegistryError):
    """A registry request failed; names the registry, repository, reference and HTTP status."""

    def __init__(
        self,
        message: str,
        hint: str = "",
        *,
        registry: str,
        repository: str = "",
        reference: str = "",
        status: int | None = None,
        retryable: bool = False,
        cause: str = "",
    ) -> None:
        super().__init__(message, hint)
        # What went wrong in a few words, without the registry and image the message names.
        self.cause = cause or message
        self.registry = registry
        self.repository = repository
        self.reference = reference
        self.status = status
        self.retryable = retryable


@dataclass(frozen=True)
class Manifest:
    """A manifest exactly as the registry sent it (bytes preserved, so the digest is kept)."""

    media_type: str
    digest: str
    raw: bytes

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES

    def json(self) -> dict[str, Any]:
        return json.loads(self.raw)

    def blobs(self) -> list[dict[str, Any]]:
        """The config and layer descriptors of an image manifest (empty for an index)."""
        data = self.json()
        return ([data["config"]] if "config" in data else []) + list(data.get("layers", []))

    def children(self) -> list[dict[str, Any]]:
        """The manifest descriptors of an index (empty for an image manifest)."""
        return list(self.json().get("manifests", [])) if self.is_index else []


class LocalStorage(Protocol):
    """A registry's own storage, read and written directly (``bundle.storage.RegistryStorage``)."""

    def blob_path(self, digest: str) -> Any: ...

    def mount(self, repository: str, digest: str) -> bool: ...

    def receive(self, repository: str, digest: str, stream: IO[bytes] | bytes, size: int, item: str) -> None: ...

    def linked_size(self, repository: str, digest: str) -> int | None: ...

    def manifest(self, repository: str, reference: str) -> tuple[str, bytes] | None: ...

    def missing_for(self, repository: str, blobs: list[str], children: list[str]) -> list[str]: ...

    def put_manifest(self, repository: str, reference: str, digest: str, raw: bytes) -> None: ...

    def flush(self) -> None: ...


class _RawFile(io.BufferedReader):
    """A blob file read as urllib3's raw stream is (``decode_content`` is meaningless here)."""

    def read(self, amount: int | None = -1, decode_content: bool | None = None) -> bytes:
        return super().read(amount)


class _StoredBlob:
    """``open_blob``'s answer from the storage: ``.raw`` and ``.content`` as on a response."""

    def __init__(self, path: Any) -> None:
        self.raw = _RawFile(io.FileIO(path))

    @property
    def content(self) -> bytes:
        return self.raw.read()

    def __enter__(self) -> _StoredBlob:
        return self

    def __exit__(self, *exc: object) -> None:
        self.raw.close()


# The "upload URL" mount_blob answers when the blob will be written into the storage, not sent.
INTO_STORAGE = "storage:"


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class CountingReader:
    """A file-like view of a byte stream that counts what is read through it.

    ``__len__`` lets requests send a Content-Length and stream the body instead of buffering.
    The bytes are not hashed here: the receiving registry hashes them and refuses a blob whose
    digest differs (400 DIGEST_INVALID), so a second hash would only cost CPU.
    """

    def __init__(self, stream: IO[bytes], size: int, on_bytes: Callable[[int], None] | None = None) -> None:
        self._stream = stream
        self._size = size
        self._on_bytes = on_bytes
        self.count = 0

    def __len__(self) -> int:
        return self._size

    def read(self, amount: int = CHUNK) -> bytes:
        data = self._stream.read(amount if amount and amount > 0 else CHUNK)
        self.count += len(data)
        if data and self._on_bytes:
            self._on_bytes(len(data))
        return data


def _registry_message(response: requests.Response) -> str:
    """The registry's ``{"errors": [{code, message}]}`` envelope as one line, or the reason."""
    try:
        errors = response.json().get("errors") or []
        text = "; ".join(f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in errors)
    except (ValueError, AttributeError):
        text = ""
    return text or response.reason or f"HTTP {response.status_code}"


class _Adapter(HTTPAdapter):
    """Connection pools that send request bodies in large blocks (urllib3's default is 16 KiB)."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["blocksize"] = CHUNK
        super().init_poolmanager(*args, **kwargs)


class RegistryClient:
    """One registry, with its TLS mode, credentials, token cache and retry policy."""

    def __init__(
        self,
        host: str,
        tls: str = "verify",
        credentials: Credentials | None = None,
        *,
        session: requests.Session | None = None,
        retries: int = 5,
        backoff: float = 0.5,
        timeout: float = 60.0,
        pool: int = 32,
        plain_credentials: bool = False,
    ) -> None:
        if tls not in TLS_MODES:
            raise RegistryError(f"registry {host}: unknown TLS mode {tls!r}", f"use one of {', '.join(TLS_MODES)}")
        self.host = host
        self.tls = tls
        self.base = f"{'http' if tls == 'http' else 'https'}://{host}"
        self.verify = tls == "verify"
        self.credentials = credentials
        # Credentials may cross the network in clear text (the section's ``insecure``); loopback always may.
        self.plain_credentials = plain_credentials
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        self.tokens = TokenCache()
        self._basic = False
        # Why this registry was given up on (None: it answers, as far as we know).
        self.down: str | None = None
        # The registry's storage when it is ours (push-registry sets it): manifests and blobs are
        # then read and written there in the registry's own layout, never requested; the
        # registry serves what is there (it keeps no cache of it), and a manifest is stored only
        # when every blob and child manifest it names is, as the registry checks.
        self.storage: LocalStorage | None = None
        if session is None:
            session = requests.Session()
            # The environment is read once here, not on every request (requests' trust_env scans
            # os.environ and ~/.netrc per call): the proxy for this registry, a CA bundle.
            session.proxies = requests.utils.get_environ_proxies(self.base)
            session.trust_env = False
        self.session = session
        bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        # What requests is handed as ``verify``: a CA bundle from the environment, as with trust_env.
        self._verify: bool | str = bundle if bundle and self.verify else self.verify
        adapter = _Adapter(pool_connections=pool, pool_maxsize=pool)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def __repr__(self) -> str:
        return f"RegistryClient({self.host!r}, tls={self.tls!r})"

    # -- transport ---------------------------------------------------------------------------

    def _auth_header(self, scope: str, url: str) -> dict[str, str]:
        if not url.startswith(self.base + "/"):
            return {}  # a Location naming another place gets neither password nor token
        if self._basic and self.credentials:
            return {"Authorization": self.credentials.basic_header()}
        token = self.tokens.get(scope)
        return {"Authorization": f"Bearer {token}"} if token else {}

    def _authenticate(self, response: requests.Response, scope: str, where: dict[str, str]) -> bool:
        """Answer a 401 challenge; True when a retry with new credentials makes sense."""
        challenge = Challenge.parse(response.headers.get("WWW-Authenticate", ""))
        if challenge.scheme == "basic":
            if not self.credentials or self._basic:
                return False
            self._refuse_credentials(self.base + "/v2/", where)
            self._basic = True
            return True
        if challenge.scheme == "bearer" and "realm" in challenge.params:
            if self.credentials is not None:
                self._refuse_credentials(challenge.params["realm"], where)
            self.tokens.forget(scope)
            try:
                token, expires = fetch_token(
                    self.session, challenge, scope, self.credentials, self._verify, self.timeout
                )
            except (requests.RequestException, ValueError) as exc:
                raise self._error(
                    f"token request to {challenge.params['realm']} failed: {exc}",
                    "check the registry credentials (config or docker config.json)",
                    None, **where,
                ) from None
            self.tokens.put(scope, token, expires)
            return True
        return False

    def _refuse_credentials(self, url: str, where: dict[str, str]) -> None:
        """Raise when the credentials may not be sent to ``url`` (see ``auth.refuse_credentials``)."""
        why = refuse_credentials(url, self.host, self.plain_credentials)
        if why is not None:
            raise self._error(f"refusing to send the registry credentials: {why}",
                              "use TLS for this registry (its tls: verify), or set its insecure: true to allow "
                              "credentials over plain HTTP", 401, **where)

    def _error(self, what: str, hint: str, status: int | None, repository: str = "", reference: str = "",
               retryable: bool = False) -> RegistryHTTPError:
        target = f"{self.host}/{repository}" if repository else self.host
        if reference:
            target += f"@{reference}" if reference.startswith("sha256:") else f":{reference}"
        return RegistryHTTPError(
            f"registry {target}: {what}", hint, registry=self.host, repository=repository, reference=reference,
            status=status, retryable=retryable, cause=what,
        )

    def request(
        self,
        method: str,
        path: str,
        *,
        repository: str = "",
        reference: str = "",
        scope: str = "",
        ok: tuple[int, ...] = (200,),
        data: Any = None,
        replayable: bool = True,
        **kwargs: Any,
    ) -> requests.Response:
        """Send one request with auth and retries; return the response when its status is in ``ok``."""
        url = path if path.startswith("http") else self.base + path
        where = {"repository": repository, "reference": reference}
        headers = dict(kwargs.pop("headers", {}) or {})
        reauthenticated = False
        attempt = 0
        started = time.monotonic()
        while True:
            attempt += 1
            if self.down is not None:
                raise self._error(self.down, "check that the registry is running and reachable", None,
                                  retryable=True, **where)
            try:
                response = self.session.request(
                    method, url, data=data, headers={**headers, **self._auth_header(scope, url)},
                    verify=self._verify, timeout=(min(CONNECT_TIMEOUT, self.timeout), self.timeout), **kwargs,
                )
            except requests.exceptions.SSLError as exc:
                raise self._error(
                    f"TLS failed: {exc}", "set the registry's tls mode to no-verify or http if it is meant to be",
                    None, **where,
                ) from None
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
                cause = why(exc).lower()
                if replayable and attempt <= self.retries and time.monotonic() - started < GIVE_UP:
                    self._sleep(attempt, None, f"{method} {url}: {cause}", started + GIVE_UP)
                    continue
                if replayable or isinstance(exc, requests.exceptions.ConnectTimeout) or "refused" in cause:
                    self.down = cause  # retried for GIVE_UP seconds, or nothing listens: given up on
                raise self._error(cause, "check that the registry is running and reachable", None, retryable=True,
                                  **where) from None
            except requests.RequestException as exc:
                raise self._error(f"{method} failed: {exc.__class__.__name__}: {exc}", "see the registry's log",
                                  None, **where) from None
            if response.status_code in ok:
                return response
            renewed = False
            if response.status_code == 401 and not reauthenticated:
                reauthenticated = True
                renewed = self._authenticate(response, scope, where)
                if renewed and replayable:
                    response.close()
                    continue
            status = response.status_code
            # A streamed body cannot be replayed here; with fresh credentials its caller may resend it.
            retryable = status == 429 or status >= 500 or renewed
            if retryable and replayable and attempt <= self.retries:
                self._sleep(attempt, response, f"{method} {url}: HTTP {status}")
                response.close()
                continue
            raise self._http_error(method, response, retryable, where)

    def _http_error(self, method: str, response: requests.Response, retryable: bool,
                    where: dict[str, str]) -> RegistryHTTPError:
        status = response.status_code
        detail = _registry_message(response) if method != "HEAD" else (response.reason or "")
        hints = {
            401: "give credentials for this registry (config or docker config.json)",
            403: "the credentials lack permission for this repository",
            404: "check the image name and tag, and that the image was mirrored",
            429: "the registry is rate-limiting; wait, or lower jobs",
        }
        hint = hints.get(status, "the registry failed; retry later" if status >= 500 else "see the registry's log")
        response.close()
        return self._error(f"{method} failed: HTTP {status} {detail}".rstrip(), hint, status, retryable=retryable,
                           **where)

    def _sleep(self, attempt: int, response: requests.Response | None, why: str,
               deadline: float | None = None) -> None:
        wait = self.backoff * (2 ** (attempt - 1)) * (0.5 + random.random())
        asked = retry_after(response) if response is not None else None
        if asked is not None:
            wait = min(asked, MAX_WAIT)
        if deadline is not None:
            wait = max(0.0, min(wait, deadline - time.monotonic()))
        log.debug("retrying in %.1fs (attempt %d): %s", wait, attempt, why)
        time.sleep(wait)

    # -- API ---------------------------------------------------------------------------------

    def ping(self) -> bool:
        """True when ``/v2/`` answers as a v2 registry (200, or 401 asking for credentials)."""
        return self.silence() is None

    def silence(self) -> str | None:
        """Why ``/v2/`` does not answer as a v2 registry, in a few words; None when it does."""
        try:
            response = self.session.get(self.base + "/v2/", verify=self._verify, timeout=5)
        except requests.RequestException as exc:
            return why(exc)
        with response:
            if response.status_code in (200, 401):
                self.down = None  # it answers (again): no longer given up on
                return None
            return f"/v2/ answered HTTP {response.status_code}"

    @staticmethod
    def _scope(repository: str, push: bool = False) -> str:
        return f"repository:{repository}:{'pull,push' if push else 'pull'}"

    def head_manifest(self, repository: str, reference: str, api: bool = False) -> tuple[str, str] | None:
        """(digest, media type) of a manifest, or None when the registry does not have it.

        ``api``: ask the registry even when its storage is at hand (what it serves, not what is on disk).
        """
        if self.storage is not None and not api:
            stored = self.storage.manifest(repository, reference)
            return None if stored is None else (stored[0], self._sniff_media_type(stored[1], "", repository, reference))
        response = self.request(
            "HEAD", f"/v2/{repository}/manifests/{reference}", repository=repository, reference=reference,
            scope=self._scope(repository), ok=(200, 404), headers={"Accept": ", ".join(MANIFEST_TYPES)},
        )
        with response:
            if response.status_code == 404:
                return None
            digest = response.headers.get("Docker-Content-Digest", "")
            media_type = response.headers.get("Content-Type", "").split(";")[0]
        if not digest:
            # Without the header a HEAD cannot tell the digest; a GET hashes the body.
            manifest = self.get_manifest(repository, reference)
            return manifest.digest, manifest.media_type
        return digest, media_type

    def get_manifest(self, repository: str, reference: str) -> Manifest:
        """The manifest (image manifest or index), verified against a digest reference."""
        if self.storage is not None:
            stored = self.storage.manifest(repository, reference)
            if stored is None:
                raise self._error("manifest unknown", "push it first", 404, repository, reference)
            return Manifest(self._sniff_media_type(stored[1], "", repository, reference), *stored)
        response = self.request(
            "GET", f"/v2/{repository}/manifests/{reference}", repository=repository, reference=reference,
            scope=self._scope(repository), headers={"Accept": ", ".join(MANIFEST_TYPES)},
        )
        raw = response.content
        digest = sha256_digest(raw)
        media_type = response.headers.get("Content-Type", "").split(";")[0]
        if media_type not in MANIFEST_TYPES:
            media_type = self._sniff_media_type(raw, media_type, repository, reference)
        if reference.startswith("sha256:") and digest != reference:
            raise self._error(f"manifest body hashes to {digest}", "the registry sent a corrupt manifest", 200,
                              repository, reference)
        return Manifest(media_type, digest, raw)

    def _sniff_media_type(self, raw: bytes, header: str, repository: str, reference: str) -> str:
        try:
            data = json.loads(raw)
        except ValueError:
            data = {}
        if data.get("schemaVersion") == 1 or "signatures" in data:
            raise self._error("manifest is Docker schema 1, which cannot be mirrored with its digest", "use an "
                              "image pushed in schema 2 or OCI format", 200, repository, reference)
        found = data.get("mediaType") or (OCI_INDEX if "manifests" in data else OCI_MANIFEST if "layers" in data
                                          else "")
        if found not in MANIFEST_TYPES:
            raise self._error(f"unsupported manifest type {header or found!r}",
                              f"supported: {', '.join(MANIFEST_TYPES)}", 200, repository, reference)
        return found

    def put_manifest(self, repository: str, reference: str, manifest: Manifest) -> str:
        """Store ``manifest`` under a tag or its digest; returns the digest the registry reports."""
        if self.storage is not None:
            missing = self.storage.missing_for(repository, [b["digest"] for b in manifest.blobs()],
                                               [c["digest"] for c in manifest.children()])
            if missing:
                raise self._error(f"manifest names what the repository lacks: {', '.join(missing)}",
                                  "push its blobs and child manifests first", 400, repository, reference)
            self.storage.put_manifest(repository, reference, manifest.digest, manifest.raw)
            return manifest.digest
        response = self.request(
            "PUT", f"/v2/{repository}/manifests/{reference}", repository=repository, reference=reference,
            scope=self._scope(repository, push=True), ok=(200, 201), data=manifest.raw,
            headers={"Content-Type": manifest.media_type},
        )
        with response:
            digest = response.headers.get("Docker-Content-Digest", manifest.digest)
        if digest != manifest.digest:
            raise self._error(f"stored manifest as {digest}, expected {manifest.digest}", "the registry rewrote "
                              "the manifest; it cannot keep digests", response.status_code, repository, reference)
        return digest

    def has_blob(self, repository: str, digest: str) -> int | None:
        """The blob's size when ``repository`` has it, else None."""
        if self.storage is not None:
            return self.storage.linked_size(repository, digest)
        response = self.request(
            "HEAD", f"/v2/{repository}/blobs/{digest}", repository=repository, reference=digest,
            scope=self._scope(repository), ok=(200, 404), allow_redirects=True,
        )
        with response:
            if response.status_code == 404:
                return None
            return int(response.headers.get("Content-Length", "0") or 0)

    def open_blob(self, repository: str, digest: str) -> requests.Response | _StoredBlob:
        """A streamed GET of a blob; the caller reads ``.raw`` and closes it."""
        if self.storage is not None:
            if self.storage.linked_size(repository, digest) is None:
                raise self._error("blob unknown", "push it first", 404, repository, digest)
            return _StoredBlob(self.storage.blob_path(digest))
        return self.request(
            "GET", f"/v2/{repository}/blobs/{digest}", repository=repository, reference=digest,
            scope=self._scope(repository), stream=True,
        )

    def get_blob(self, repository: str, digest: str) -> bytes:
        """A (small) blob in memory, verified against its digest."""
        with self.open_blob(repository, digest) as response:
            data = response.content
        if sha256_digest(data) != digest:
            raise self._error(f"blob body hashes to {sha256_digest(data)}", "the registry sent a corrupt blob",
                              200, repository, digest, retryable=True)
        return data

    def mount_blob(self, repository: str, digest: str, source_repository: str) -> str | None:
        """Mount ``digest`` from another repository; None when mounted, else an open upload's URL
        (``INTO_STORAGE`` with a storage: the blob is in none of its repositories)."""
        if self.storage is not None:
            return None if self.storage.mount(repository, digest) else INTO_STORAGE
        response = self.request(
            "POST", f"/v2/{repository}/blobs/uploads/", repository=repository, reference=digest,
            scope=f"{self._scope(repository, push=True)} {self._scope(source_repository)}",
            ok=(201, 202), params={"mount": digest, "from": source_repository},
        )
        with response:
            if response.status_code == 201:
                return None
            return urljoin(self.base + "/", response.headers["Location"])

    def put_blob(self, repository: str, digest: str, data: bytes) -> bool:
        """Make ``repository`` hold the in-memory blob ``data``; False when it was there already.

        One POST mounting the blob from the repository itself answers 201 when it is there and
        otherwise opens the upload the PUT then fills: one request fewer than HEAD, POST, PUT.
        """
        location = self.mount_blob(repository, digest, repository)
        if location is None:
            return False
        self.upload_blob(repository, digest, data, len(data), location)
        return True

    def start_upload(self, repository: str) -> str:
        """Open an upload session; returns its URL."""
        response = self.request(
            "POST", f"/v2/{repository}/blobs/uploads/", repository=repository,
            scope=self._scope(repository, push=True), ok=(202,),
        )
        with response:
            return urljoin(self.base + "/", response.headers["Location"])

    def upload_blob(
        self,
        repository: str,
        digest: str,
        body: IO[bytes] | bytes,
        size: int,
        location: str | None = None,
        on_bytes: Callable[[int], None] | None = None,
    ) -> int:
        """Stream ``body`` (``size`` bytes) as blob ``digest`` (the registry checks the digest); bytes sent."""
        if self.storage is not None and location in (None, INTO_STORAGE):
            return self._into_storage(repository, digest, body, size, on_bytes)
        location = location or self.start_upload(repository)
        separator = "&" if "?" in location else "?"
        reader = CountingReader(io.BytesIO(body) if isinstance(body, bytes) else body, size, on_bytes)
        try:
            response = self.request(
                "PUT", f"{location}{separator}digest={digest}", repository=repository, reference=digest,
                scope=self._scope(repository, push=True), ok=(201,), data=reader, replayable=False,
                headers={"Content-Type": "application/octet-stream"},
            )
        except RegistryHTTPError as exc:
            if exc.status == 400 and "digest" in exc.message.lower():
                # The registry hashed what arrived and it is not the blob: a corrupt source or transfer.
                raise self._error(
                    f"the {reader.count} bytes sent do not hash to {digest} (the registry refused them)",
                    "the source sent a corrupt or truncated blob; retry", 400, repository, digest, retryable=True,
                ) from None
            raise
        response.close()
        if reader.count != size:
            raise self._error(
                f"sent {reader.count} bytes, expected {size} bytes of {digest}",
                "the source sent a truncated blob; retry", None, repository, digest, retryable=True,
            )
        return reader.count

    def _into_storage(self, repository: str, digest: str, body: IO[bytes] | bytes, size: int,
                      on_bytes: Callable[[int], None] | None) -> int:
        """``upload_blob`` into the storage: hashed on the way, renamed in only when it matches."""
        from apex_tools.bundle.layout import IntegrityError

        assert self.storage is not None
        reader = body if isinstance(body, bytes) else CountingReader(body, size, on_bytes)
        try:
            self.storage.receive(repository, digest, reader, size, f"blob {repository}@{digest}")
        except IntegrityError as exc:
            # As the registry's 400 DIGEST_INVALID on an upload: the source sent other bytes.
            raise self._error(f"the bytes read hash to {exc.actual}, not {digest}",
                              "the source sent a corrupt or truncated blob; retry", None, repository, digest,
                              retryable=True) from None
        if isinstance(reader, bytes):
            if on_bytes:
                on_bytes(len(reader))
            return len(reader)
        return reader.count

    def _paginate(self, path: str, key: str, repository: str = "", page: int = 100) -> list[str]:
        items: list[str] = []
        url: str | None = f"{path}?n={page}"
        while url:
            response = self.request(
                "GET", url, repository=repository, scope=self._scope(repository) if repository else
                "registry:catalog:*", ok=(200, 404) if repository else (200,),
            )
            with response:
                if response.status_code == 404:
                    return []
                items += response.json().get(key) or []
                following = response.links.get("next", {}).get("url")
            url = urljoin(self.base + "/", following) if following else None
        return items

    def tags(self, repository: str) -> list[str]:
        """Every tag of ``repository`` (following pagination); empty when it does not exist."""
        return self._paginate(f"/v2/{repository}/tags/list", "tags", repository)

    def catalog(self) -> list[str]:
        """Every repository of the registry (following pagination)."""
        return self._paginate("/v2/_catalog", "repositories")
