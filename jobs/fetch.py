"""Fetching a photo submitted by URL (``image_url``): one guarded, streaming GET per try.

The rule is the callbacks' (callbacks/urlpolicy.py): http(s) only, no credentials, and every
address the host resolves to must be public unless IMAGE_URL_ALLOWED_NETWORKS opens its range.
It is checked when the job is submitted (image_url_check) and again here, on every try and every
redirect, before a byte is sent; the connection goes to the very address that was checked (the
Host header and TLS name stay the URL's), so a second DNS answer cannot point it elsewhere.

Limits: (connect, read) timeouts, a total per try that a watchdog enforces however slowly the
server trickles, MAX_UPLOAD_BYTES (the Content-Length first, then the bytes as they come), and
then the uploads' own checks (jobs/imaging.py: format, pixels, trailing data).

Outcome: a Fetched, or FetchFailed with the job's error code: image_url_refused (the policy),
image_too_large, unsupported_image, image_fetch_failed (4xx at once; connect errors, timeouts,
5xx and 429 after IMAGE_URL_FETCH_ATTEMPTS tries). Messages are fixed sentences for the client;
details go to the log.
"""

import io
import ipaddress
import logging
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import urllib3
from django.conf import settings

from callbacks.urlpolicy import IPAddress, UrlRefused, address_allowed, check_url, networks_parse, parse_address, resolve
from core.deadline import SocketDeadline

from .imaging import ImageInfo, ImageRejected, image_probe

logger = logging.getLogger(__name__)

USER_AGENT = "face-detect-api-fetch/1"
CHUNK_BYTES = 64 * 1024
REDIRECT_STATUSES = (301, 302, 303, 307, 308)


class FetchFailed(Exception):
    """The photo cannot be had: ``code`` is the job's error code, ``message`` the client's
    sentence."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


class _Transient(Exception):
    """Worth another try (connect errors, timeouts, 5xx, 429). ``message`` is for the client."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(detail or message)
        self.message = message


@dataclass(frozen=True)
class Fetched:
    data: bytes
    info: ImageInfo
    url: str  # where the bytes came from, after redirects


def _networks():
    return networks_parse(settings.IMAGE_URL_ALLOWED_NETWORKS)


def image_url_check(url: str) -> None:
    """At submission: raise UrlRefused (code image_url_refused, or invalid_scheme) unless
    ``url`` may be fetched now. Resolves the host."""
    check_url(url, networks=_networks(), field="image_url", code="image_url_refused")


# --- One try's connections (its deadline: core.deadline.SocketDeadline) ----------------------------


class _PinnedMixin:
    """urllib3 connections to the checked address: the peer is checked again once connected (no
    proxy, no second lookup can change it) and handed to the try's watchdog."""

    def __init__(self, *args, watchdog: SocketDeadline, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._watchdog = watchdog

    def _new_conn(self):
        sock = super()._new_conn()
        peer = parse_address(sock.getpeername()[0])
        if not address_allowed(peer, _networks()):
            sock.close()
            logger.info("image_url: connected to %s, which is not allowed", peer)
            raise UrlRefused("the connection led to an address that is not public", code="image_url_refused")
        try:
            self._watchdog.register(sock)
        except OSError:
            sock.close()
            raise
        return sock


class _PinnedHTTPConnection(_PinnedMixin, urllib3.connection.HTTPConnection):
    pass


class _PinnedHTTPSConnection(_PinnedMixin, urllib3.connection.HTTPSConnection):
    pass


# --- The fetch --------------------------------------------------------------------------------------


def image_fetch(url: str) -> Fetched:
    """GET ``url`` (following up to IMAGE_URL_MAX_REDIRECTS redirects, each checked), retrying
    transient failures, and check the bytes as an upload's. Raises FetchFailed."""
    attempts = max(settings.IMAGE_URL_FETCH_ATTEMPTS, 1)
    for number in range(1, attempts + 1):
        try:
            data, final_url = _fetch_once(url)
            break
        except _Transient as exc:
            logger.warning("fetching %s: try %d of %d failed: %s", url, number, attempts, exc)
            if number == attempts:
                raise FetchFailed("image_fetch_failed", f"{exc.message} (after {attempts} tries)") from exc
            time.sleep(settings.IMAGE_URL_RETRY_BACKOFF * 2 ** (number - 1))
    try:
        info = image_probe(io.BytesIO(data))
    except ImageRejected as exc:
        if exc.code == "image_too_large":
            raise FetchFailed("image_too_large", exc.message) from exc
        raise FetchFailed("unsupported_image", f"The URL's content is not an accepted image: {exc.message}") from exc
    return Fetched(data=data, info=info, url=final_url)


def _fetch_once(url: str) -> tuple[bytes, str]:
    with SocketDeadline(settings.IMAGE_URL_TOTAL_TIMEOUT) as watchdog:
        try:
            current = url
            for _hop in range(settings.IMAGE_URL_MAX_REDIRECTS + 1):
                response = _get(current, watchdog)
                try:
                    if response.status in REDIRECT_STATUSES:
                        location = response.headers.get("Location")
                        if not location:
                            raise FetchFailed("image_fetch_failed", f"The URL answered {response.status} without a Location.")
                        try:
                            current = urljoin(current, location.strip())
                            urlsplit(current).port  # noqa: B018 - a malformed netloc raises here, not later
                        except ValueError as exc:
                            raise FetchFailed("image_fetch_failed", "The URL redirected to a malformed URL.") from exc
                        continue
                    if response.status == 429 or response.status >= 500:
                        raise _Transient(f"The URL answered {response.status}.")
                    if response.status != 200:
                        raise FetchFailed("image_fetch_failed", f"The URL answered {response.status}.")
                    return _read_body(response, watchdog), current
                finally:
                    response.release_conn()
                    response.close()
            raise FetchFailed("image_fetch_failed", f"The URL redirected more than {settings.IMAGE_URL_MAX_REDIRECTS} times.")
        except UrlRefused as exc:
            raise FetchFailed("image_url_refused", f"The URL (or a redirect) is not one we fetch: {exc}") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            if watchdog.expired:
                raise _Transient(
                    f"The URL did not answer in full within {settings.IMAGE_URL_TOTAL_TIMEOUT:g} s.", f"{type(exc).__name__}: {exc}"
                ) from exc
            # NewConnectionError is a TimeoutError too in urllib3 2 (for compatibility): refused first.
            if isinstance(exc, urllib3.exceptions.TimeoutError) and not isinstance(exc, urllib3.exceptions.NewConnectionError):
                raise _Transient("The URL did not answer in time.", f"{type(exc).__name__}: {exc}") from exc
            raise _Transient("The URL could not be fetched (connection failed).", f"{type(exc).__name__}: {exc}") from exc


def _pinned_address(url: str) -> tuple[str, str, int, IPAddress]:
    """(scheme, host, port, address): the URL checked by the rule, and the first of its host's
    addresses (all of which are allowed) to connect to. A name that does not resolve now is
    transient (DNS trouble); one that resolves to a refused address is refused."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UrlRefused("image_url must be an http or https URL.", code="image_url_refused")
    if not parts.hostname:
        raise UrlRefused("The URL has no host.", code="image_url_refused")
    if parts.username or parts.password:
        raise UrlRefused("Credentials in the URL are not allowed.", code="image_url_refused")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError as exc:
        raise UrlRefused("The URL's port is not valid.", code="image_url_refused") from exc
    try:
        addresses = resolve(parts.hostname, port)
    except UrlRefused as exc:
        raise _Transient("The URL's host does not resolve.", str(exc)) from exc
    networks = _networks()
    refused = [str(ip) for ip in addresses if not address_allowed(ip, networks)]
    if refused or not addresses:
        # Logged, never told: the job's error would map the private network for its client.
        logger.info("image_url: %s resolves to %s", parts.hostname, ", ".join(refused) or "nothing")
        raise UrlRefused("the host resolves to an address that is not public", code="image_url_refused")
    return scheme, parts.hostname, port, addresses[0]


def _get(url: str, watchdog: SocketDeadline) -> urllib3.HTTPResponse:
    """One GET of ``url`` on a connection to its checked address (status and headers read, the
    body not yet)."""
    scheme, host, port, ip = _pinned_address(url)
    parts = urlsplit(url)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    remaining = watchdog.remaining()
    timeout = urllib3.Timeout(
        connect=min(settings.IMAGE_URL_CONNECT_TIMEOUT, remaining), read=min(settings.IMAGE_URL_READ_TIMEOUT, remaining)
    )
    default_port = 443 if scheme == "https" else 80
    host_header = f"[{host}]" if isinstance(_literal(host), ipaddress.IPv6Address) else host
    if port != default_port:
        host_header += f":{port}"
    kwargs = {"timeout": timeout, "retries": False, "maxsize": 1, "watchdog": watchdog}
    if scheme == "https":
        # The certificate is checked against the URL's host name, not the address connected to.
        pool = urllib3.HTTPSConnectionPool(str(ip), port, server_hostname=host, assert_hostname=host, cert_reqs="CERT_REQUIRED", **kwargs)
        pool.ConnectionCls = _PinnedHTTPSConnection
    else:
        pool = urllib3.HTTPConnectionPool(str(ip), port, **kwargs)
        pool.ConnectionCls = _PinnedHTTPConnection
    return pool.urlopen(
        "GET",
        path,
        headers={"Host": host_header, "User-Agent": USER_AGENT, "Accept": "image/*", "Accept-Encoding": "identity"},
        redirect=False,
        retries=False,
        preload_content=False,
        decode_content=False,
        assert_same_host=False,
        release_conn=False,
    )


def _literal(host: str):
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _too_large(size: int | str) -> FetchFailed:
    return FetchFailed("image_too_large", f"The URL's content is {size} bytes; at most {settings.MAX_UPLOAD_BYTES} bytes are accepted.")


def _read_body(response: urllib3.HTTPResponse, watchdog: SocketDeadline) -> bytes:
    """The body, refused as soon as it is known to pass MAX_UPLOAD_BYTES: from its
    Content-Length before reading, else from the bytes counted as they come."""
    limit = settings.MAX_UPLOAD_BYTES
    declared = (response.headers.get("Content-Length") or "").strip()
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(int(declared))
    buffer = bytearray()
    while True:
        chunk = response.read1(CHUNK_BYTES, decode_content=False)
        if not chunk:
            break
        buffer += chunk
        if len(buffer) > limit:
            raise _too_large(f"more than {limit}")
    if watchdog.expired:
        raise _Transient(f"The URL did not answer in full within {settings.IMAGE_URL_TOTAL_TIMEOUT:g} s.")
    return bytes(buffer)
