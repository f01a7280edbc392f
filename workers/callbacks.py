"""Sending a callback: one signed HTTP POST with bounded timeouts and no redirects."""

import datetime as dt
import time
from dataclasses import dataclass

import requests
from django.conf import settings

from .signing import signed_headers

USER_AGENT = "face-detect-api-webhooks/1"
# How much of a receiver's answer is kept with the attempt.
RESPONSE_EXCERPT_BYTES = 1024


@dataclass(frozen=True)
class PostResult:
    started_at: dt.datetime
    status_code: int | None
    error: str
    duration_ms: int
    response_excerpt: str
    retry_after: str | None = None


def post_signed(url: str, body: bytes, *, webhook_id: str) -> PostResult:
    """POST ``body`` (JSON bytes) to ``url`` once, signed per Standard Webhooks with
    CALLBACK_SIGNING_SECRET. Never raises for network errors: the result carries the status
    code, or None and the error."""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        **signed_headers(settings.CALLBACK_SIGNING_SECRET, webhook_id, body),
    }
    started_at = dt.datetime.now(dt.timezone.utc)
    started = time.monotonic()
    try:
        with requests.Session() as session:
            # Proxies from the environment are not for callbacks; redirects are never followed.
            session.trust_env = False
            response = session.post(
                url,
                data=body,
                headers=headers,
                timeout=(settings.CALLBACK_CONNECT_TIMEOUT, settings.CALLBACK_READ_TIMEOUT),
                allow_redirects=False,
                stream=True,
            )
            # Read only the start of the answer: a receiver cannot make us download a lot.
            excerpt = response.raw.read(RESPONSE_EXCERPT_BYTES, decode_content=True) or b""
            response.close()
    except requests.RequestException as exc:
        return PostResult(started_at, None, f"{type(exc).__name__}: {exc}"[:500], _ms(started), "")
    return PostResult(
        started_at,
        response.status_code,
        "",
        _ms(started),
        excerpt.decode("utf-8", "replace"),
        response.headers.get("Retry-After"),
    )


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
