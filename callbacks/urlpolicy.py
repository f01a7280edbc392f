"""Which callback URLs may be called: public http(s) hosts only, checked at submit time and again
on every delivery (the name may resolve elsewhere by then: DNS rebinding).

Refused: loopback, private, link-local (cloud metadata included), shared, reserved, multicast and
unspecified addresses, in IPv4, IPv6, IPv4-mapped, 6to4, Teredo and NAT64 forms, and any name
that resolves to one. CALLBACK_ALLOWED_NETWORKS (CIDRs) opens chosen ranges, for development
and tests.

The same rule guards the photos the workers fetch by URL (jobs/fetch.py), with its own opened
ranges (IMAGE_URL_ALLOWED_NETWORKS): ``networks`` and ``field`` below.
"""

import ipaddress
import logging
import socket
from urllib.parse import urlsplit

from django.conf import settings

logger = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
NAT64 = ipaddress.ip_network("64:ff9b::/96")
# IPv6 that may be reached at all: global unicast, or the well-known NAT64 prefix (checked by its
# embedded IPv4). Outside it, Python's is_global still says True for some forms that lead inside:
# site-local fec0::/10, IPv4-compatible ::/96, IPv4-translated ::ffff:0:0:0/96, and the local-use
# NAT64 prefix 64:ff9b:1::/48 (a site's own translator: 64:ff9b:1::a9fe:a9fe is the metadata host).
GLOBAL_UNICAST = ipaddress.ip_network("2000::/3")


class UrlRefused(ValueError):
    """The URL may not be called. The message says why, for the client."""

    def __init__(self, message: str, code: str = "callback_url_refused") -> None:
        super().__init__(message)
        self.code = code


def parse_address(text: str) -> IPAddress:
    """An address as a resolver or a socket gives it, without an IPv6 zone (%eth0)."""
    return ipaddress.ip_address(text.split("%", 1)[0])


Networks = list[ipaddress.IPv4Network | ipaddress.IPv6Network]


def networks_parse(cidrs) -> Networks:
    """CIDR strings (a setting's list) as networks; blanks skipped."""
    return [ipaddress.ip_network(cidr.strip(), strict=False) for cidr in cidrs if cidr.strip()]


def _allowed_networks() -> Networks:
    return networks_parse(settings.CALLBACK_ALLOWED_NETWORKS)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped:
        return ip.ipv4_mapped
    if ip.sixtofour:
        return ip.sixtofour
    if ip.teredo:
        return ip.teredo[1]
    if ip in NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def address_allowed(ip: IPAddress, networks: Networks | None = None) -> bool:
    """True when a callback (or, with ``networks`` opened instead of CALLBACK_ALLOWED_NETWORKS,
    another outgoing request) may connect to ``ip``."""
    if networks is None:
        networks = _allowed_networks()
    if any(ip in network for network in networks):
        return True
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id or not (ip in GLOBAL_UNICAST or ip in NAT64):
            return False
        inner = _embedded_ipv4(ip)
        if inner is not None and not address_allowed(inner, networks):
            return False
    return ip.is_global and not ip.is_multicast


def resolve(host: str, port: int) -> list[IPAddress]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, OSError) as exc:
        raise UrlRefused(f"The host {host!r} does not resolve.") from exc
    return [parse_address(info[4][0]) for info in infos]


def check_callback_url(url: str) -> None:
    """Raise UrlRefused unless ``url`` is http(s) and every address its host resolves to is
    allowed."""
    check_url(url)


def check_url(
    url: str, *, networks: Networks | None = None, field: str = "callback_url", code: str = "callback_url_refused"
) -> list[IPAddress]:
    """Raise UrlRefused (with ``code``; ``field`` names the URL in messages) unless ``url`` is
    http(s) without credentials and every address its host resolves to is allowed (``networks``:
    the ranges opened, default CALLBACK_ALLOWED_NETWORKS). Returns those addresses: a caller that
    connects to one of them is not at the mercy of a second lookup (DNS rebinding)."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        raise UrlRefused(f"{field} must be an http or https URL.", code="invalid_scheme")
    if not parts.hostname:
        raise UrlRefused("The URL has no host.", code=code)
    if parts.username or parts.password:
        raise UrlRefused("Credentials in the URL are not allowed.", code=code)
    try:
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    except ValueError as exc:
        raise UrlRefused("The URL's port is not valid.", code=code) from exc
    try:
        addresses = resolve(parts.hostname, port)
    except UrlRefused as exc:
        raise UrlRefused(str(exc), code=code) from exc
    refused = [str(ip) for ip in addresses if not address_allowed(ip, networks)]
    if refused or not addresses:
        # The addresses go to the log only: told to the client, they would map the private
        # network through this host's resolver.
        logger.info("refused %s: %s resolves to %s", field, parts.hostname, ", ".join(refused) or "nothing")
        raise UrlRefused("The host resolves to an address that is not public.", code=code)
    return addresses
