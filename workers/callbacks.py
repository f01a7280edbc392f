"""Sending a callback: one HTTP POST with bounded timeouts, no redirects, and a record of it."""

import json
import time
from dataclasses import dataclass
from typing import Any

import requests
from django.conf import settings

USER_AGENT = "face-detect-api-callback/1"
# How much of a receiver's answer is kept with the attempt.
RESPONSE_EXCERPT_BYTES = 1024


@dataclass(frozen=True)
class PostResult:
    status_code: int | None
    error: str
    duration_ms: int
    response_excerpt: str


def post_json(url: str, payload: dict[str, Any]) -> PostResult:
    """POST ``payload`` as JSON to ``url`` once. Never raises for network errors: the result
    carries the status code, or None and the error."""
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
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
            excerpt = response.raw.read(RESPONSE_EXCERPT_BYTES, decode_content=True) or b""
            response.close()
    except requests.RequestException as exc:
        return PostResult(None, f"{type(exc).__name__}: {exc}"[:500], _ms(started), "")
    return PostResult(response.status_code, "", _ms(started), excerpt.decode("utf-8", "replace"))


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
