"""What HTTP servers ask of a retrying client."""

from __future__ import annotations

import email.utils
import time

import requests
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
