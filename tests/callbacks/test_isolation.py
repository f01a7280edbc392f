"""Receivers isolated from each other: a slow receiver's backlog does not hold back a fast one's
callbacks. The deliverer is the real Celery delivery worker (two pool processes, as deployed,
each with its sender) against two real HTTP servers on loopback.

The deliveries are made as outbox rows of finished jobs and sent through the real delivery task
(the one a redelivery uses) rather than by running the detector on dozens of photos: what is
under test starts at the outbox, and the detector would only make the test minutes longer (the
end-to-end pipeline tests cover detection -> delivery with the same task and sender)."""

import json
import statistics
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from callbacks.models import CallbackDelivery
from callbacks.services import callback_delivery_enqueue
from callbacks.signing import verify_webhook
from tests.callbacks.factories import finished_jobs
from tests.conftest import WorkerProcess

pytestmark = [pytest.mark.django_db(transaction=True)]

SLOW_SECONDS = 3.0
SLOW_JOBS = 40
FAST_JOBS = 10
PER_HOST = 4


class Receiver:
    """A real HTTP server on loopback that answers every POST with 200 after ``delay`` seconds,
    and keeps what it received, when, and the most requests it had open at once."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.got: list[tuple[float, dict, bytes]] = []
        self.open_now = 0
        self.open_max = 0
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    receiver.open_now += 1
                    receiver.open_max = max(receiver.open_max, receiver.open_now)
                try:
                    time.sleep(receiver.delay)
                    self.send_response(200)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                    self.wfile.flush()
                finally:
                    with receiver.lock:
                        receiver.open_now -= 1
                        receiver.got.append((time.monotonic(), dict(self.headers), body))
                        receiver.changed.notify_all()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def wait(self, count: int, timeout: float) -> int:
        """Block until ``count`` POSTs were answered; fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while len(self.got) < count:
                if not self.changed.wait(max(0.0, deadline - time.monotonic())) and time.monotonic() >= deadline:
                    pytest.fail(f"{len(self.got)} of {count} callbacks within {timeout}s")
            return len(self.got)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers():
    slow, fast = Receiver(SLOW_SECONDS), Receiver(0.0)
    yield slow, fast
    slow.close()
    fast.close()


@pytest.fixture
def deliverer(worker_env, tmp_path):
    env = {**worker_env, "CALLBACK_MAX_IN_FLIGHT_PER_HOST": str(PER_HOST)}
    process = WorkerProcess(tmp_path / "deliverer.log", env, concurrency=2, queues="deliver").start()
    yield process
    process.stop()


def test_a_slow_receiver_does_not_hold_back_a_fast_one(receivers, deliverer, settings):
    """With dozens of a 3 s receiver's callbacks queued, a fast receiver's callbacks all arrive
    while most of that backlog is still undelivered; then the slow one's all arrive, each once,
    never more than CALLBACK_MAX_IN_FLIGHT_PER_HOST at a time."""
    slow, fast = receivers
    slow_ids = finished_jobs(slow.url(), SLOW_JOBS, "slow")
    for delivery_id in slow_ids:
        callback_delivery_enqueue(delivery_id=delivery_id)
    slow.wait(1, timeout=60)  # the slow backlog is being worked on

    fast_ids = finished_jobs(fast.url(), FAST_JOBS, "fast")
    sent = time.monotonic()
    for delivery_id in fast_ids:
        callback_delivery_enqueue(delivery_id=delivery_id)
    fast.wait(FAST_JOBS, timeout=60)
    with slow.lock:
        slow_done = len(slow.got)
    # Event order, not a stopwatch: the fast receiver was served in full while the slow one's
    # backlog (which takes SLOW_JOBS / PER_HOST * SLOW_SECONDS = 30 s to drain) was mostly left.
    assert SLOW_JOBS - slow_done >= 20, f"only {SLOW_JOBS - slow_done} slow callbacks were left"
    lags = [arrived - sent for arrived, _, _ in fast.got]
    print(
        f"\nfast receiver: lag p50 {statistics.median(lags):.3f}s, max {max(lags):.3f}s; slow "
        f"receiver: {slow_done} of {SLOW_JOBS} delivered then"
    )

    slow.wait(SLOW_JOBS, timeout=SLOW_JOBS / PER_HOST * SLOW_SECONDS * 4 + 30)
    print(f"slow backlog of {SLOW_JOBS} drained {time.monotonic() - sent:.1f}s after the fast jobs were sent")
    assert slow.open_max <= PER_HOST
    for receiver, ids in ((slow, slow_ids), (fast, fast_ids)):
        webhook_ids = [headers["webhook-id"] for _, headers, _ in receiver.got]
        assert len(webhook_ids) == len(set(webhook_ids)) == len(ids)  # none twice
        assert set(webhook_ids) == set(CallbackDelivery.objects.filter(id__in=ids).values_list("webhook_id", flat=True))
        for _, headers, body in receiver.got:
            verify_webhook(settings.CALLBACK_SIGNING_SECRET, headers, body)
            assert json.loads(body)["status"] == "completed"
    # The last attempts are recorded just after their answers arrive.
    rows = CallbackDelivery.objects.filter(id__in=slow_ids + fast_ids)
    deadline = time.monotonic() + 30
    while rows.filter(status="pending").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(row.status == "delivered" and row.attempt_count == 1 and row.sending_until is None for row in rows)
