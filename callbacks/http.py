"""Sending a callback: one signed HTTP POST with bounded timeouts and no redirects."""

import datetime as dt
import threading
import time
from dataclasses import dataclass

import requests
import urllib3
from django.conf import settings
from requests.adapters import HTTPAdapter

from core.deadline import DeadlinePassed, SocketDeadline

from .signing import signed_headers
from .urlpolicy import UrlRefused, address_allowed, check_callback_url, parse_address

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


class _Attempt(SocketDeadline):
    """One POST's sockets and deadline (core.deadline), and whether its peer is checked."""

    def __init__(self, *, check_peer: bool, seconds: float) -> None:
        super().__init__(seconds)
        self.check_peer = check_peer

    def __enter__(self) -> "_Attempt":
        _current.attempt = self
        return super().__enter__()

    def __exit__(self, *exc) -> None:
        _current.attempt = None
        super().__exit__(*exc)


# The POST running on this thread (urllib3 connects on the caller's thread).
_current = threading.local()


def _check_peer(sock) -> None:
    """The address actually connected to must be allowed: a name that resolved to a public
    address at check time may resolve to a private one now (DNS rebinding)."""
    peer = parse_address(sock.getpeername()[0])
    if not address_allowed(peer):
        sock.close()
        raise UrlRefused(f"connected to {peer}, which is not a public address")


class _PeerChecked:
    """Mixed into urllib3's connections: the socket is checked right after it connects, and
    handed to the attempt's deadline watchdog."""

    def _new_conn(self):
        sock = super()._new_conn()
        attempt = getattr(_current, "attempt", None)
        if attempt is None or attempt.check_peer:
            _check_peer(sock)
        if attempt is not None:
            try:
                attempt.register(sock)
            except DeadlinePassed:
                sock.close()
                raise
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


def _read_excerpt(response, attempt: _Attempt) -> tuple[bytes, bool]:
    """The first RESPONSE_EXCERPT_BYTES of the answer (decoded), read as it comes; and whether
    the read was cut by the deadline (what came before it is kept)."""
    chunks: list[bytes] = []
    size = 0
    try:
        while size < RESPONSE_EXCERPT_BYTES:
            chunk = response.raw.read1(RESPONSE_EXCERPT_BYTES - size, decode_content=True)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError, ValueError):
        if not attempt.expired:
            raise
    # A compressed answer can decode to more than was asked for: cut again after decoding.
    return b"".join(chunks)[:RESPONSE_EXCERPT_BYTES], attempt.expired


def post_signed(url: str, body: bytes, *, webhook_id: str, check_policy: bool = True) -> PostResult:
    """POST ``body`` (JSON bytes) to ``url`` once, signed per Standard Webhooks with
    CALLBACK_SIGNING_SECRET. Only public addresses are called (callbacks.urlpolicy), checked when the
    name is resolved and again on the connected socket. Never raises for network errors: the
    result carries the status code, or None and the error.

    The whole try (connect, send, answer) ends within CALLBACK_TOTAL_TIMEOUT however slowly the
    receiver sends (name lookups excepted: the resolver's own timeout bounds them). An answer
    whose status line came in time counts; its body is read only up to the deadline and
    RESPONSE_EXCERPT_BYTES.

    ``check_policy=False`` skips the address policy, for URLs an operator configured (the
    rollout alert URL, often an internal address), never for a URL a client gave."""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        **signed_headers(settings.CALLBACK_SIGNING_SECRET, webhook_id, body),
    }
    started_at = dt.datetime.now(dt.UTC)
    started = time.monotonic()
    total = settings.CALLBACK_TOTAL_TIMEOUT
    with _Attempt(check_peer=check_policy, seconds=total) as attempt:
        try:
            if check_policy:
                check_callback_url(url)
            with requests.Session() as session:
                # Proxies from the environment are not for callbacks; redirects are never followed.
                session.trust_env = False
                session.mount("http://", GuardedAdapter(max_retries=0))
                session.mount("https://", GuardedAdapter(max_retries=0))
                response = session.post(
                    url,
                    data=body,
                    headers=headers,
                    timeout=(min(settings.CALLBACK_CONNECT_TIMEOUT, total), min(settings.CALLBACK_READ_TIMEOUT, total)),
                    allow_redirects=False,
                    stream=True,
                )
                # Read only the start of the answer: a receiver cannot make us download a lot.
                excerpt, cut = _read_excerpt(response, attempt)
                response.close()
        except UrlRefused as exc:
            return PostResult(started_at, None, f"refused: {exc}"[:500], _ms(started), "", refused=True)
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            if attempt.expired:
                error = f"TotalTimeout: no complete answer within CALLBACK_TOTAL_TIMEOUT ({total:g} s)"
            else:
                error = f"{type(exc).__name__}: {exc}"
            return PostResult(started_at, None, error[:500], _ms(started), "")
    text = excerpt.decode("utf-8", "replace")
    if cut:
        text += f" [answer cut at CALLBACK_TOTAL_TIMEOUT ({total:g} s)]"
    return PostResult(
        started_at,
        response.status_code,
        "",
        _ms(started),
        text,
        response.headers.get("Retry-After"),
    )


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
