"""What HTTP servers ask of a retrying client, and what a failed request says in a few words."""

from __future__ import annotations

import email.utils
import re
import time

import requests
import urllib3
from urllib3.util.retry import Retry

# A Retry-After is obeyed up to this many seconds; a longer wait would look like a hung run.
MAX_WAIT = 60.0


def retry_after(response: requests.Response) -> float | None:
    """Seconds asked for by a ``Retry-After`` header (seconds or an HTTP date), or None."""
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class CappedRetry(Retry):
    """urllib3's ``Retry`` obeying ``Retry-After`` only up to ``MAX_WAIT`` seconds."""

    def get_retry_after(self, response):  # type: ignore[no-untyped-def]
        asked = super().get_retry_after(response)
        return None if asked is None else min(asked, MAX_WAIT)


def why(exc: BaseException) -> str:
    """A network error in a few words ("Connection refused", "read timed out"), not urllib3's nesting."""
    if isinstance(exc, requests.ConnectTimeout):
        return "connection timed out"
    if isinstance(exc, (requests.Timeout, urllib3.exceptions.TimeoutError, TimeoutError)):
        return "read timed out"
    text = str(exc)
    if re.search(r"Failed to resolve|Name or service not known|Temporary failure in name resolution|"
                 r"No address associated with hostname|getaddrinfo failed", text):
        host = re.search(r"Failed to resolve '([^']+)'|host='([^']+)'", text)
        name = next((g for g in host.groups() if g), "") if host else ""
        return f"name resolution failed for {name}" if name else "name resolution failed"
    found = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    if found:
        return found.group(1).strip()
    if isinstance(exc, (requests.exceptions.ChunkedEncodingError, urllib3.exceptions.ProtocolError)):
        return "connection broken"
    return exc.__class__.__name__
