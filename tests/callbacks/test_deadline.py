"""The total deadline of a try: however slowly a receiver trickles its answer, the try ends at
CALLBACK_TOTAL_TIMEOUT, and only the start of the answer is read."""

import socket
import threading

import pytest

from callbacks.http import RESPONSE_EXCERPT_BYTES, post_signed


class Trickler:
    """A raw TCP receiver that reads the request, sends ``head`` at once, then ``tail`` one byte
    a second (a minute's worth), noting whether the sender hung up before the end."""

    def __init__(self, head: bytes, tail: bytes, interval: float = 1.0) -> None:
        self.head, self.tail, self.interval = head, tail, interval
        self.hung_up = threading.Event()
        self.finished = threading.Event()
        self.stop = threading.Event()
        self.server = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=self._serve, daemon=True).start()

    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.getsockname()[1]}/hook"

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        with conn:
            conn.recv(65536)
            try:
                conn.sendall(self.head)
                for byte in self.tail:
                    if self.stop.wait(self.interval):
                        return
                    conn.sendall(bytes([byte]))
            except OSError:
                self.hung_up.set()
                return
            # Sending to a closed peer may succeed once before failing: a zero-byte read
            # tells whether the other side is gone.
            conn.settimeout(0.5)
            try:
                if conn.recv(1) == b"":
                    self.hung_up.set()
                    return
            except OSError:
                pass
            self.finished.set()

    def close(self) -> None:
        self.stop.set()
        self.server.close()


@pytest.fixture
def trickler_factory():
    made = []

    def make(head: bytes, tail: bytes) -> Trickler:
        made.append(Trickler(head, tail))
        return made[-1]

    yield make
    for t in made:
        t.close()


def test_a_body_trickled_a_byte_a_second_is_cut_at_the_deadline(trickler_factory, settings):
    """Headers at once, then a byte a second for a minute: the 200 counts, the answer is cut at
    the deadline (what came is kept), and the receiver sees us hang up long before its end."""
    settings.CALLBACK_TOTAL_TIMEOUT = 3
    settings.CALLBACK_READ_TIMEOUT = 10  # each byte comes well within it: only the deadline ends this
    receiver = trickler_factory(b"HTTP/1.1 200 OK\r\nContent-Length: 60\r\n\r\n", b"x" * 60)
    result = post_signed(receiver.url(), b"{}", webhook_id="msg_trickle")
    assert result.status_code == 200 and result.error == ""
    assert result.response_excerpt.startswith("x") and "answer cut at CALLBACK_TOTAL_TIMEOUT" in result.response_excerpt
    assert receiver.hung_up.wait(5) and not receiver.finished.is_set()


def test_headers_trickled_a_byte_a_second_end_in_a_timeout(trickler_factory, settings):
    """A status line that never completes within the deadline is a timeout (retried later)."""
    settings.CALLBACK_TOTAL_TIMEOUT = 2
    settings.CALLBACK_READ_TIMEOUT = 10
    receiver = trickler_factory(b"HTTP/1.1 2", b"00 OK\r\nX-Slow: " + b"y" * 60)
    result = post_signed(receiver.url(), b"{}", webhook_id="msg_trickle_head")
    assert result.status_code is None and result.error.startswith("TotalTimeout")
    assert receiver.hung_up.wait(5) and not receiver.finished.is_set()


def test_only_the_start_of_a_long_answer_is_read(trickler_factory, settings):
    """A receiver that answers megabytes: the excerpt is the first RESPONSE_EXCERPT_BYTES."""
    body = b"z" * (4 * 1024 * 1024)
    receiver = trickler_factory(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body, b"")
    result = post_signed(receiver.url(), b"{}", webhook_id="msg_long")
    assert result.status_code == 200 and result.response_excerpt == "z" * RESPONSE_EXCERPT_BYTES
