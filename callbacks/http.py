"""Sending a callback: one signed HTTP POST with bounded timeouts and no redirects."""

import datetime as dt
import time
from dataclasses import dataclass

import requests
import urllib3
from django.conf import settings
from requests.adapters import HTTPAdapter

from .urlpolicy import UrlRefused, address_allowed, check_callback_url, parse_address

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
    # The address is not one we call (policy, not a fault): never retried.
    refused: bool = False


def _check_peer(sock) -> None:
    """The address actually connected to must be allowed: a name that resolved to a public
    address at check time may resolve to a private one now (DNS rebinding)."""
    peer = parse_address(sock.getpeername()[0])
    if not address_allowed(peer):
        sock.close()
        raise UrlRefused(f"connected to {peer}, which is not a public address")


class _PeerChecked:
    """Mixed into urllib3's connections: the socket is checked right after it connects."""

    def _new_conn(self):
        sock = super()._new_conn()
        _check_peer(sock)
        return sock


class _GuardedHTTPConnection(_PeerChecked, urllib3.connection.HTTPConnection):
    pass


class _GuardedHTTPSConnection(_PeerChecked, urllib3.connection.HTTPSConnection):
    pass


class _GuardedHTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


class GuardedAdapter(HTTPAdapter):
    """A requests adapter whose connections check the peer address before sending a byte."""

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _GuardedHTTPPool, "https": _GuardedHTTPSPool}


def post_signed(url: str, body: bytes, *, webhook_id: str, check_policy: bool = True) -> PostResult:
    """POST ``body`` (JSON bytes) to ``url`` once, signed per Standard Webhooks with
    CALLBACK_SIGNING_SECRET. Only public addresses are called (callbacks.urlpolicy), checked when the
    name is resolved and again on the connected socket. Never raises for network errors: the
    result carries the status code, or None and the error.

    ``check_policy=False`` skips the address policy, for URLs an operator configured (the
    rollout alert URL, often an internal address), never for a URL a client gave."""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        **signed_headers(settings.CALLBACK_SIGNING_SECRET, webhook_id, body),
    }
    started_at = dt.datetime.now(dt.timezone.utc)
    started = time.monotonic()
    try:
        if check_policy:
            check_callback_url(url)
        adapter = GuardedAdapter if check_policy else HTTPAdapter
        with requests.Session() as session:
            # Proxies from the environment are not for callbacks; redirects are never followed.
            session.trust_env = False
            session.mount("http://", adapter(max_retries=0))
            session.mount("https://", adapter(max_retries=0))
            response = session.post(
                url,
                data=body,
                headers=headers,
                timeout=(settings.CALLBACK_CONNECT_TIMEOUT, settings.CALLBACK_READ_TIMEOUT),
                allow_redirects=False,
                stream=True,
            )
            # Read only the start of the answer: a receiver cannot make us download a lot.
            # (A compressed answer can decode to more than was read: cut again after decoding.)
            excerpt = (response.raw.read(RESPONSE_EXCERPT_BYTES, decode_content=True) or b"")[:RESPONSE_EXCERPT_BYTES]
            response.close()
    except UrlRefused as exc:
        return PostResult(started_at, None, f"refused: {exc}"[:500], _ms(started), "", refused=True)
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
