"""Signed callback POSTs against a real HTTP server on loopback."""

import socket
import threading
import time

import pytest

from callbacks.http import post_signed
from callbacks.signing import WebhookVerificationError, sign, verify_webhook

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # the Standard Webhooks spec's example secret


def test_post_is_signed_over_the_exact_bytes(receiver, settings):
    """Standard Webhooks headers; the receiver verifies them with the helper."""
    receiver.script = [201]
    body = b'{"a":[1.5],"b":1}'
    result = post_signed(receiver.url(), body, webhook_id="msg_1")
    (request,) = receiver.wait(1, timeout=5)
    assert result.status_code == 201 and result.error == ""
    assert request["body"] == body and request["headers"]["Content-Type"] == "application/json"
    assert request["headers"]["webhook-id"] == "msg_1"
    verify_webhook(settings.CALLBACK_SIGNING_SECRET, request["headers"], request["body"])


def test_signature_matches_the_standard_webhooks_reference_vector():
    """The spec's published example: id, timestamp, body, secret -> signature."""
    body = b'{"test": 2432232314}'
    assert sign(SECRET, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == ("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")


@pytest.mark.parametrize(
    "tamper",
    [
        lambda h, b: (h, b + b" "),
        lambda h, b: ({**h, "webhook-id": "msg_other"}, b),
        lambda h, b: ({**h, "webhook-timestamp": str(int(h["webhook-timestamp"]) - 3600)}, b),
        lambda h, b: ({k: v for k, v in h.items() if k != "webhook-signature"}, b),
    ],
    ids=["body", "id", "stale-timestamp", "no-signature"],
)
def test_verification_refuses_tampering_and_replays(tamper):
    from callbacks.signing import signed_headers

    body = b'{"ok":true}'
    headers, body = tamper(signed_headers(SECRET, "msg_x", body), body)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(SECRET, headers, body)


class Listener:
    """A bare TCP listener on loopback, to see whether a POST connected and what it sent, with
    no waiting on a clock: on loopback a connect() returns once the handshake is done, so a
    connection made before post_signed returned is already in the accept queue."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.setblocking(False)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}{path}"

    def connection(self) -> socket.socket | None:
        """The connection post_signed made, or None if it made none."""
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return None
        conn.setblocking(True)
        return conn

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener():
    bare = Listener()
    yield bare
    bare.close()


def bytes_until_closed(conn: socket.socket) -> bytes:
    """Everything the peer sent on ``conn`` until it closed it (an event, not a pause: the peer
    has closed its end by the time post_signed returns, so the end of the stream is on its way;
    the timeout is only a deadline for a peer that did not close)."""
    conn.settimeout(30)
    received = b""
    with conn:
        while chunk := conn.recv(4096):
            received += chunk
    return received


def test_redirects_are_not_followed(receiver):
    """A 302 is reported as such; the Location it names is never requested."""
    receiver.script = [302]
    result = post_signed(receiver.url(), b"{}", webhook_id="msg_r")
    assert result.status_code == 302
    # The receiver records each request before it answers it, and a followed redirect would be
    # requested before post_signed returns: whatever it sent is recorded by now.
    (request,) = receiver.wait(1, timeout=5)
    assert request["path"] == "/hook" and receiver.received.empty()


def test_a_dead_receiver_is_an_error_not_an_exception():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = post_signed(f"http://127.0.0.1:{port}/", b"{}", webhook_id="msg_d")
    assert result.status_code is None and "ConnectionError" in result.error


def test_a_slow_receiver_times_out(settings):
    """The read timeout bounds how long one delivery can hold a worker."""
    settings.CALLBACK_READ_TIMEOUT = 0.5
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    accepted = []  # keeps the accepted connection open (and silent) until the test ends
    threading.Thread(target=lambda: accepted.append(server.accept()), daemon=True).start()
    started = time.monotonic()
    result = post_signed(f"http://127.0.0.1:{server.getsockname()[1]}/", b"{}", webhook_id="msg_s")
    assert result.status_code is None and "Timeout" in result.error
    assert time.monotonic() - started < 5
    server.close()


def test_a_url_that_now_resolves_privately_is_refused_at_delivery(listener, settings):
    """Checked again when sending: no connection is even made to a loopback receiver once it is not allowed."""
    settings.CALLBACK_ALLOWED_NETWORKS = []
    result = post_signed(listener.url(), b"{}", webhook_id="msg_p")
    assert result.refused and result.status_code is None and "not public" in result.error
    assert listener.connection() is None


def test_dns_rebinding_is_caught_on_the_connected_socket(listener, settings, monkeypatch):
    """The name resolves to a public address when checked, then to loopback when connecting:
    the peer address of the socket is checked before a byte is sent."""
    import ipaddress

    settings.CALLBACK_ALLOWED_NETWORKS = []
    monkeypatch.setattr("callbacks.urlpolicy.resolve", lambda host, port: [ipaddress.ip_address("93.184.216.34")])
    result = post_signed(listener.url(), b"{}", webhook_id="msg_rebind")
    assert result.refused and "127.0.0.1" in result.error
    conn = listener.connection()
    assert conn is not None  # it did connect: the check is on the connected socket
    assert bytes_until_closed(conn) == b""  # and closed it without sending a byte


@pytest.mark.parametrize(
    "address, allowed",
    [
        ("2606:4700::1111", True),  # global unicast
        ("64:ff9b::808:808", True),  # well-known NAT64 of a public IPv4
        ("64:ff9b::a9fe:a9fe", False),  # ... of the metadata host
        ("64:ff9b:1::a9fe:a9fe", False),  # local-use NAT64: a site's own translator
        ("::ffff:0:7f00:1", False),  # IPv4-translated
        ("::7f00:1", False),  # IPv4-compatible
        ("fec0::1", False),  # site-local
    ],
)
def test_ipv6_forms_that_lead_inside_are_refused(address, allowed):
    import ipaddress

    from callbacks.urlpolicy import address_allowed

    assert address_allowed(ipaddress.ip_address(address), []) is allowed
