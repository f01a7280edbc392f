"""The sender of a delivery worker process: callback (and rollout alert) POSTs on a pool of threads, so that a POST
waiting on a slow receiver holds a thread, never a worker slot.

One loop thread owns the database work: it claims due deliveries fairly across receivers
(callbacks.services.callback_deliveries_claim: per-host caps and breakers, counted from the rows
so they hold across processes), hands each claim to the pool, and records each result as it
comes back. The pool's threads only POST (callbacks.http.post_signed), so a process keeps one
database connection however many POSTs are in flight. Woken by its own tasks (a new delivery,
a redelivery), and every CALLBACK_SENDER_POLL seconds for retries and rows made elsewhere.

A detect worker process runs one that claims nothing (``claims=False``): it only sends the first
tries its own tasks claimed (send_claimed) and records them; the deliverers' senders do the rest.
"""

import contextvars
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.conf import settings
from django.db import close_old_connections, connections

from core.logging import log_context_add

from .http import post_signed
from .services import Claim, callback_deliveries_claim, callback_delivery_record

logger = logging.getLogger(__name__)

# How long a stopping process waits for the POSTs in flight (they are bounded by
# CALLBACK_TOTAL_TIMEOUT; one cut short is tried again once its lease runs out).
STOP_WAIT_SECONDS = 20
# Log contexts kept for deliveries not yet claimed here (another process may claim them).
MAX_CONTEXTS = 10_000


class Sender:
    """Claims, sends and records callback deliveries with up to ``threads`` POSTs in flight."""

    def __init__(
        self, *, threads: int, poll: float, log_fields: Callable[[int], dict[str, Any]] | None = None, claims: bool = True
    ) -> None:
        self.log_fields = log_fields
        # False: sends only what its tasks claimed themselves (send_claimed), never queries for due rows.
        self.claims = claims
        self.threads = max(1, threads)
        self.poll = max(0.05, poll)
        self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="callback-send")
        self._results: queue.Queue[tuple[Claim, object]] = queue.Queue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._in_flight = 0
        # The log context of the task that asked for a delivery (its task, request id, job), for
        # the line of that delivery's try.
        self._contexts: dict[int, contextvars.Context] = {}
        # Deliveries whose first try a task claimed itself (send_claimed): no claim asks for them.
        self._preclaimed: set[int] = set()
        # Whether the next turn claims: asked for (wake), the poll came round, or the last claim
        # filled every free thread (more may be due). A turn woken only by a POST's result that
        # came back records it and claims nothing: no query for what nobody asked.
        self._claim_next = True
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> "Sender":
        self._thread = threading.Thread(target=self._run, name="callback-sender", daemon=True)
        self._thread.start()
        return self

    def wake(self, delivery_id: int | None = None) -> None:
        """Look for due deliveries now; ``delivery_id``'s try is logged in the caller's context."""
        if delivery_id is not None:
            with self._lock:
                if len(self._contexts) > MAX_CONTEXTS:  # those claimed by other processes
                    self._contexts.clear()
                self._contexts[delivery_id] = contextvars.copy_context()
        self._claim_next = True
        self._wake.set()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def reserve(self) -> bool:
        """Hold a free sending thread for a claim the caller is about to take itself (send_claimed,
        or release if it took none). False: every thread is busy, so the caller leaves the
        delivery to the claims in turn (a claim must not wait out its lease in a queue)."""
        with self._lock:
            if self._stop.is_set() or self._in_flight >= self.threads:
                return False
            self._in_flight += 1
            return True

    def release(self) -> None:
        """Give back a thread reserved for a claim that was not taken."""
        with self._lock:
            self._in_flight -= 1

    def send_claimed(self, claim: Claim) -> None:
        """POST a claim taken with a reserved thread; recorded by this sender's loop as its own."""
        with self._lock:
            self._contexts[claim.delivery_id] = contextvars.copy_context()
            self._preclaimed.add(claim.delivery_id)
        self._pool.submit(self._post, claim)

    def stop(self, timeout: float = STOP_WAIT_SECONDS) -> None:
        """Claim nothing more; wait up to ``timeout`` for the POSTs in flight and record them."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            # A stopped sender leaves no database connection of its thread behind.
            connections.close_all()

    def _loop(self) -> None:
        while True:
            try:
                self._record_results()
                if self._stop.is_set():
                    if self._in_flight == 0:
                        return
                elif self._claim_next and self.claims:
                    self._claim_next = False
                    self._claim_and_send()
            except Exception:
                # The database away, say: logged, tried again at the next turn. This thread must
                # never die, or the process would stop delivering.
                logger.exception("callback sender: a turn failed; trying again in %ss", self.poll)
            finally:
                close_old_connections()
            if not self._wake.wait(self.poll):
                self._claim_next = True  # the poll: retries due, rows made elsewhere
            self._wake.clear()

    def _claim_and_send(self) -> None:
        # The free threads are reserved before the claim query, under the lock, as reserve()
        # does: a delivering task reserving one meanwhile must not find it free too, or a claim
        # would wait in the pool's queue while its lease runs (and another sender could take it).
        with self._lock:
            free = self.threads - self._in_flight
            if free > 0:
                self._in_flight += free
                asked = [delivery_id for delivery_id in self._contexts if delivery_id not in self._preclaimed]
        if free <= 0:
            self._claim_next = True  # once a thread is free again
            return
        claims = []
        try:
            claims = callback_deliveries_claim(limit=free, asked=asked)
        finally:
            with self._lock:
                self._in_flight -= free - len(claims)  # give back what was not claimed
        if len(claims) >= free:
            self._claim_next = True
        for claim in claims:
            self._pool.submit(self._post, claim)

    def _post(self, claim: Claim) -> None:
        try:
            result = post_signed(claim.url, claim.body, webhook_id=claim.webhook_id, check_policy=claim.check_policy)
        except Exception as exc:  # post_signed never raises for the network; anything else is a bug
            logger.exception("callback %s: the POST crashed", claim.webhook_id)
            result = exc
        self._results.put((claim, result))
        self._wake.set()

    def _record_results(self) -> None:
        while True:
            try:
                claim, result = self._results.get_nowait()
            except queue.Empty:
                return
            with self._lock:
                self._in_flight -= 1
                context = self._contexts.pop(claim.delivery_id, None)
                self._preclaimed.discard(claim.delivery_id)
            if isinstance(result, Exception):
                continue  # not recorded: the lease runs out and the delivery is tried again
            (context or contextvars.copy_context()).run(self._record, claim, result, asked=context is not None)

    def _record(self, claim: Claim, result, *, asked: bool) -> None:
        if not asked and self.log_fields is not None:
            log_context_add(keep_existing=True, **self.log_fields(claim.delivery_id))
        try:
            callback_delivery_record(claim=claim, result=result)
        except Exception:
            # Not recorded (the database away): the lease runs out and the delivery is tried
            # again; the receiver may see this webhook id twice, as Standard Webhooks allows.
            logger.exception("callback %s: attempt %d could not be recorded", claim.webhook_id, claim.number)


_sender: Sender | None = None


def sender_start(*, log_fields: Callable[[int], dict[str, Any]] | None = None, claims: bool = True) -> Sender:
    """This process's sender, started on first call. ``log_fields(delivery_id)``: the fields of
    the log line of a try no task asked for (a retry). ``claims``: see Sender (the first call
    decides)."""
    global _sender
    if _sender is None:
        _sender = Sender(
            threads=settings.CALLBACK_MAX_IN_FLIGHT, poll=settings.CALLBACK_SENDER_POLL, log_fields=log_fields, claims=claims
        ).start()
    return _sender


def sender_running() -> Sender | None:
    return _sender


def sender_stop() -> None:
    global _sender
    if _sender is not None:
        _sender.stop()
        _sender = None
