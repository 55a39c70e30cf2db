"""Registry credentials and the token handshake: Basic, or Bearer tokens cached per scope.

Credentials come from the configuration or from the user's docker ``config.json``; they are
never logged (``Credentials.__repr__`` hides the password).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

import requests

log = logging.getLogger(__name__)

# Renew a token this many seconds before it expires, so a slow request never carries a stale one.
EXPIRY_MARGIN = 10.0
# The spec's default lifetime when the token server says nothing.
DEFAULT_TOKEN_LIFETIME = 60.0
_PARAM = re.compile(r'(\w+)="([^"]*)"')


@dataclass(frozen=True)
class Credentials:
    """A user name and password (or identity token) for one registry."""

    username: str
    password: str = field(repr=False)

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


def docker_config_path() -> Path:
    """``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``."""
    folder = os.environ.get("DOCKER_CONFIG") or str(Path.home() / ".docker")
    return Path(folder) / "config.json"


def docker_config_credentials(host: str, path: Path | None = None) -> Credentials | None:
    """Credentials for ``host`` from a docker ``config.json`` (``auths`` entries only), or None."""
    path = path or docker_config_path()
    try:
        auths = json.loads(path.read_text()).get("auths", {})
    except (OSError, ValueError, AttributeError):
        return None
    candidates = (host, f"https://{host}", f"http://{host}", f"https://{host}/v1/", f"https://{host}/v2/")
    if host == "docker.io":
        candidates += ("https://index.docker.io/v1/", "index.docker.io")
    for key in candidates:
        entry = auths.get(key)
        if not isinstance(entry, dict):
            continue
        if entry.get("auth"):
            try:
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                log.warning("%s: the auth entry for %s is not base64 user:password; ignored", path, key)
                continue
            return Credentials(user, password)
        if entry.get("username"):
            return Credentials(entry["username"], entry.get("password", ""))
    return None


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def refuse_credentials(url: str, registry: str, plain_ok: bool) -> str | None:
    """Why the registry's credentials may not go to ``url`` (None: they may).

    Only to the registry's own host or an https token realm; over plain HTTP only to loopback,
    unless ``plain_ok`` (the section's ``insecure``) says so.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    own = host == urlsplit(f"//{registry}").hostname
    if not own and parts.scheme != "https":
        return f"{url} is neither the registry's own host nor an https address"
    if parts.scheme != "https" and not _loopback(host) and not plain_ok:
        return f"{url} is plain HTTP to another machine"
    return None


@dataclass(frozen=True)
class Challenge:
    """A parsed ``WWW-Authenticate`` header."""

    scheme: str
    params: dict[str, str]

    @classmethod
    def parse(cls, header: str) -> Challenge:
        scheme, _, rest = header.strip().partition(" ")
        return cls(scheme.lower(), dict(_PARAM.findall(rest)))


@dataclass
class _Token:
    value: str
    expires: float


class TokenCache:
    """Bearer tokens per scope, shared by the threads of one client; renewed before expiry."""

    def __init__(self) -> None:
        self._tokens: dict[str, _Token] = {}
        self._lock = threading.Lock()

    def get(self, scope: str) -> str | None:
        with self._lock:
            token = self._tokens.get(scope)
        if token is None or token.expires - EXPIRY_MARGIN <= time.time():
            return None
        return token.value

    def forget(self, scope: str) -> None:
        with self._lock:
            self._tokens.pop(scope, None)

    def put(self, scope: str, value: str, expires: float) -> None:
        with self._lock:
            self._tokens[scope] = _Token(value, expires)


def parse_time(text: str | None) -> datetime | None:
    """An RFC 3339 time (Go's nanoseconds cut to microseconds) as an aware datetime, or None."""
    if not text:
        return None
    text = re.sub(r"(\.\d{6})\d+", r"\1", text.strip().replace("Z", "+00:00"))
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _expiry(answer: dict[str, object]) -> float:
    """When a token expires: ``issued_at`` + ``expires_in`` (spec default 60 s)."""
    now = time.time()
    issued_at = parse_time(answer["issued_at"]) if isinstance(answer.get("issued_at"), str) else None
    issued = issued_at.timestamp() if issued_at else None
    # A skewed clock must not make a fresh token look expired, nor an old one fresh.
    issued = min(issued or now, now)
    lifetime = answer.get("expires_in")
    if isinstance(lifetime, (int, float)) and lifetime > 0:
        return issued + float(lifetime)
    return issued + DEFAULT_TOKEN_LIFETIME


def fetch_token(
    session: requests.Session,
    challenge: Challenge,
    scope: str,
    credentials: Credentials | None,
    verify: bool | str,
    timeout: float,
) -> tuple[str, float]:
    """Ask the challenge's realm for a token covering ``scope``; returns (token, expiry time)."""
    params = {"service": challenge.params.get("service", "")}
    wanted = challenge.params.get("scope") or scope
    if wanted:
        params["scope"] = wanted
    headers = {"Authorization": credentials.basic_header()} if credentials else {}
    response = session.get(challenge.params["realm"], params=params, headers=headers, verify=verify, timeout=timeout)
    response.raise_for_status()
    answer = response.json()
    token = answer.get("token") or answer.get("access_token")
    if not token:
        raise ValueError(f"token server {challenge.params['realm']} answered without a token")
    return token, _expiry(answer)
