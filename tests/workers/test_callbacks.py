"""Callback HTTP posts against a real HTTP server on loopback."""

import json
import socket
import threading
import time

from workers.callbacks import post_json


def test_post_sends_json_and_reports_the_status(receiver):
    receiver.script = [201]
    result = post_json(receiver.url(), {"b": 1, "a": [1.5]})
    (request,) = receiver.wait(1, timeout=5)
    assert result.status_code == 201 and result.error == ""
    assert request["headers"]["Content-Type"] == "application/json"
    assert json.loads(request["body"]) == {"a": [1.5], "b": 1}


def test_redirects_are_not_followed(receiver):
    """A 302 is reported as such; the Location it names is never requested."""
    receiver.script = [302]
    result = post_json(receiver.url(), {})
    assert result.status_code == 302
    (request,) = receiver.wait(1, timeout=5)
    time.sleep(0.3)
    assert request["path"] == "/hook" and receiver.received.empty()


def test_a_dead_receiver_is_an_error_not_an_exception():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = post_json(f"http://127.0.0.1:{port}/", {})
    assert result.status_code is None and "ConnectionError" in result.error


def test_a_slow_receiver_times_out(settings):
    """The read timeout bounds how long one delivery can hold a worker."""
    settings.CALLBACK_READ_TIMEOUT = 0.5
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    accepted = []
    threading.Thread(target=lambda: accepted.append(server.accept()), daemon=True).start()
    started = time.monotonic()
    result = post_json(f"http://127.0.0.1:{server.getsockname()[1]}/", {})
    assert result.status_code is None and "Timeout" in result.error
    assert time.monotonic() - started < 5
    server.close()
