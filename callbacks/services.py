"""Callbacks as an outbox: a delivery row per message, an attempt row per HTTP try.

A delivery's body is frozen when it is made, so every retry sends the same bytes under the same
webhook id (Standard Webhooks), signed afresh with the current timestamp. Trying a delivery first
takes a lease on it (``next_attempt_at`` pushed ahead), so a duplicate task or the sweeper cannot
send it twice at once, and a worker that dies mid-send leaves it to be tried again.
"""

import datetime as dt
import email.utils
import functools
import json
import logging
import random
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from celery import current_app
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Exists, F, OuterRef, Q
from django.utils import timezone

from core import metrics
from core.rows import columns, fields, hand_written_sql, model_from_row

from .http import PostResult, post_signed
from .models import CallbackAttempt, CallbackDelivery, CallbackHost, DeliveryKind, DeliveryStatus

logger = logging.getLogger(__name__)

# The Celery task that tries one delivery (workers/tasks.py), by name.
DELIVER_CALLBACK_TASK = "workers.tasks.deliver_callback"


def new_webhook_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def callback_delivery_create(
    *,
    image_id: uuid.UUID | None = None,
    url: str,
    render: Callable[[CallbackDelivery], dict[str, Any]],
    batch_id: uuid.UUID | None = None,
) -> CallbackDelivery:
    """A new pending delivery to ``url`` whose frozen body is ``render(delivery)`` as compact
    JSON: a job's callback (``image_id``) or a batch's (``batch_id``). The row is built first,
    unsaved, and the body rendered from it, so the body can describe the very delivery that
    carries it (its webhook id, pending, no attempts)."""
    return callback_delivery_create_claimed(image_id=image_id, batch_id=batch_id, url=url, render=render, claim=False)[0]


def callback_delivery_create_claimed(
    *,
    image_id: uuid.UUID | None = None,
    url: str,
    render: Callable[[CallbackDelivery], dict[str, Any]],
    batch_id: uuid.UUID | None = None,
    claim: bool = True,
) -> "tuple[CallbackDelivery, Claim | None]":
    """callback_delivery_create, and with ``claim`` the lease of its first try taken in the same
    statement that writes the row (a Claim; None when its receiver's breaker is open or its
    in-flight cap reached: then a sender claims it in turn). The caller sends the Claim at once
    (it must hold a free sending thread: the lease is what keeps others off) and records it,
    as a sender does with the claims it takes; it saves that claim's own transaction."""
    kind = DeliveryKind.BATCH if batch_id is not None else DeliveryKind.CALLBACK
    outbox_row = CallbackDelivery(image_id=image_id, batch_id=batch_id, kind=kind, webhook_id=new_webhook_id(), url=url, host=host_of(url))
    outbox_row.body = json.dumps(render(outbox_row), separators=(",", ":"), sort_keys=True)
    now = timezone.now()
    outbox_row.next_attempt_at = now  # after rendering: the body shows nothing scheduled
    leased = False
    if claim:
        # Locked as a sender's claim locks it (the host first, then its deliveries), so that the
        # per-host cap counts this try and no sender's claim at once.
        receiver = CallbackHost.objects.select_for_update().filter(host=outbox_row.host).first()
        if receiver is None:
            # A receiver never called before: its row made (get_or_create: in a savepoint, as two
            # jobs to it at once both try), then locked like any other.
            CallbackHost.objects.get_or_create(host=outbox_row.host)
            receiver = CallbackHost.objects.select_for_update().filter(host=outbox_row.host).first()
        leased = receiver is not None and receiver.breaker_state(now, settings.CALLBACK_BREAKER_FAILURES) == "closed"
        if leased:
            in_flight = CallbackDelivery.objects.filter(host=outbox_row.host, status=DeliveryStatus.PENDING, sending_until__gt=now).count()
            leased = in_flight < settings.CALLBACK_MAX_IN_FLIGHT_PER_HOST
        if leased:
            # What _claim does to a due row, written with the row itself.
            outbox_row.attempt_count = 1
            outbox_row.next_attempt_at = outbox_row.sending_until = now + dt.timedelta(seconds=_lease_seconds())
    outbox_row.save(force_insert=True)
    if not claim:
        # In a savepoint: two jobs to a new receiver at once both try to make its row.
        CallbackHost.objects.get_or_create(host=outbox_row.host)
    # A job's delivery claimed as it is made is its first (a redelivery is made unclaimed).
    return outbox_row, (_claim_of(outbox_row, first_of_job=image_id is not None) if leased else None)


def alert_delivery_create(*, url: str, body: bytes, webhook_id: str, subject: str) -> CallbackDelivery:
    """A pending delivery of an operator's alert (``body``, JSON bytes, sent as they are) to
    ``url``, a URL from the settings: signed, retried and recorded like a job's callback, under
    the same per-host caps and breakers, but not held to the public-address policy that guards
    clients' URLs. Idempotent by ``webhook_id``: asked again, it returns the delivery made first."""
    outbox_row, created = CallbackDelivery.objects.get_or_create(
        webhook_id=webhook_id,
        defaults={
            "kind": DeliveryKind.ALERT,
            "subject": subject[:200],
            "url": url,
            "host": host_of(url),
            "body": body.decode(),
            "next_attempt_at": timezone.now(),
        },
    )
    if created:
        CallbackHost.objects.get_or_create(host=outbox_row.host)
    return outbox_row


def callback_delivery_enqueue(*, delivery_id: int, robust: bool = False) -> None:
    """Try the delivery on a worker once the transaction that made it commits (the task is named,
    not imported: services sit below the task modules). ``robust``: a broker that refuses the
    task is logged, not raised (the row is committed; the senders' polls find it regardless)."""
    transaction.on_commit(lambda: current_app.send_task(DELIVER_CALLBACK_TASK, args=(delivery_id,)), robust=robust)


def _retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - timezone.now()).total_seconds())


def _lease_seconds() -> float:
    # Long enough for one POST to finish or reach its deadline (name lookups come on top).
    return settings.CALLBACK_TOTAL_TIMEOUT + 30


def host_of(url: str) -> str:
    """The receiver a URL names, as host:port (the unit of per-host caps and breakers)."""
    parts = urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    except ValueError:
        port = 0
    return f"{(parts.hostname or '').lower()}:{port}"


@dataclass(frozen=True)
class Claim:
    """A try of a delivery that this caller holds the lease of: send it, then record it."""

    delivery_id: int
    url: str
    body: bytes
    webhook_id: str
    number: int
    host: str
    # Whether the URL is held to the public-address policy: a client's is, an operator's is not.
    check_policy: bool = True
    # Whether this is the first delivery of its job (known when the row is made with its claim;
    # None: not known, the record looks it up).
    first_of_job: bool | None = None


def _claim(outbox_row: CallbackDelivery, now: dt.datetime) -> Claim:
    """Take the lease of a locked, due row: the attempt is counted and the row is not due again
    until the lease runs out (a sender that dies mid-send leaves it to be tried again)."""
    outbox_row.attempt_count += 1
    outbox_row.next_attempt_at = outbox_row.sending_until = now + dt.timedelta(seconds=_lease_seconds())
    outbox_row.save(update_fields=["attempt_count", "next_attempt_at", "sending_until"])
    return _claim_of(outbox_row)


def _claim_of(outbox_row: CallbackDelivery, *, first_of_job: bool | None = None) -> Claim:
    return Claim(
        delivery_id=outbox_row.id,
        url=outbox_row.url,
        body=outbox_row.body.encode(),
        webhook_id=outbox_row.webhook_id,
        number=outbox_row.attempt_count,
        host=outbox_row.host or host_of(outbox_row.url),
        check_policy=outbox_row.kind != DeliveryKind.ALERT,
        first_of_job=first_of_job,
    )


def callback_delivery_claim(*, delivery_id: int) -> Claim | None:
    """The lease of one delivery if it is pending and due (None: delivered, failed for good,
    not due, or being tried elsewhere). Per-host caps and breakers are not consulted: this is
    a direct try (callback_delivery_attempt)."""
    now = timezone.now()
    with transaction.atomic():
        outbox_row = CallbackDelivery.objects.select_for_update().get(id=delivery_id)
        if outbox_row.status != DeliveryStatus.PENDING or (outbox_row.next_attempt_at and outbox_row.next_attempt_at > now):
            return None
        return _claim(outbox_row, now)


# A new delivery is handed to a sender by the task that made or asked for it, and claimed there
# (its try then logs with that task's fields); other senders' polls leave it this long first.
HANDOVER_SECONDS = 2.0


def callback_deliveries_claim(*, limit: int, asked: Collection[int] = (), max_hosts: int = 200) -> list[Claim]:
    """Leases of up to ``limit`` due deliveries, fairly across receivers: at most
    CALLBACK_MAX_IN_FLIGHT_PER_HOST tries in flight per host (counted across every sender, from
    the rows), one for a half-open breaker, none for an open one; the host served least
    recently goes first, and within a host the delivery due longest. Safe to call from several
    processes at once: a host being claimed elsewhere is skipped this round. A delivery never
    tried is left HANDOVER_SECONDS to the sender its task handed it to, unless in ``asked``."""
    claims: list[Claim] = []
    if limit <= 0:
        return claims
    now = timezone.now()
    threshold = settings.CALLBACK_BREAKER_FAILURES
    due = CallbackDelivery.objects.filter(status=DeliveryStatus.PENDING, next_attempt_at__lte=now).filter(
        Q(attempt_count__gt=0) | Q(created_at__lte=now - dt.timedelta(seconds=HANDOVER_SECONDS)) | Q(id__in=list(asked))
    )
    hosts = list(
        CallbackHost.objects.filter(Exists(due.filter(host=OuterRef("host"))))
        .exclude(open_until__gt=now)
        .order_by(F("last_claimed_at").asc(nulls_first=True), "id")
        .values_list("host", flat=True)[:max_hosts]
    )
    for host in hosts:
        if len(claims) >= limit:
            break
        with transaction.atomic():
            receiver = CallbackHost.objects.select_for_update(skip_locked=True).filter(host=host).first()
            if receiver is None:
                continue
            state = receiver.breaker_state(now, threshold)
            if state == "open":
                continue
            cap = 1 if state == "half_open" else settings.CALLBACK_MAX_IN_FLIGHT_PER_HOST
            in_flight = CallbackDelivery.objects.filter(host=host, status=DeliveryStatus.PENDING, sending_until__gt=now).count()
            free = min(cap - in_flight, limit - len(claims))
            if free <= 0:
                continue
            rows = due.filter(host=host).select_for_update(skip_locked=True).order_by("next_attempt_at", "id")[:free]
            claims.extend(_claim(outbox_row, now) for outbox_row in rows)
            receiver.last_claimed_at = now
            receiver.save(update_fields=["last_claimed_at"])
    return claims


def callback_delivery_attempt(*, delivery_id: int) -> float | None:
    """Try a due delivery once, here and now, and record the attempt (the delivery workers'
    senders go through callback_deliveries_claim instead, which keeps the per-host caps).

    Returns the seconds until the next try, or None when there is nothing more to do now
    (delivered, failed for good, not due, or being tried elsewhere). 2xx is delivered. Connection
    errors, timeouts, 408, 429 and 5xx are retried after CALLBACK_RETRY_DELAYS (or a later
    Retry-After); anything else fails at once: other 4xx (410 Gone included), 3xx (redirects
    are never followed), and a URL whose host now resolves to a refused address.
    """
    claim = callback_delivery_claim(delivery_id=delivery_id)
    if claim is None:
        return None
    return callback_delivery_send(claim=claim)


def callback_delivery_send(*, claim: Claim) -> float | None:
    """POST a claimed try and record it (callback_delivery_record). Never raises for the network."""
    result = post_signed(claim.url, claim.body, webhook_id=claim.webhook_id, check_policy=claim.check_policy)
    return callback_delivery_record(claim=claim, result=result)


def _breaker_failure(result: PostResult) -> bool:
    """A try that says the receiver is unwell: no answer in time, a network error, 408, 429, 5xx."""
    code = result.status_code
    return not result.refused and (code is None or code in (408, 429) or code >= 500)


def callback_delivery_record(*, claim: Claim, result: PostResult) -> float | None:
    """Record the outcome of a claimed try: the attempt row, the delivery's new state (delivered,
    failed for good, or the next try scheduled), the receiver's breaker. Returns the seconds
    until the next try, or None when the delivery is over."""
    number = claim.number
    code = result.status_code
    delivered = code is not None and 200 <= code < 300
    retryable = not delivered and _breaker_failure(result)
    delays = settings.CALLBACK_RETRY_DELAYS
    next_delay = None
    if retryable and number <= len(delays):
        # Jitter spreads the retries of many deliveries to one receiver that just came back.
        next_delay = delays[number - 1] * random.uniform(0.9, 1.1)
        retry_after = _retry_after_seconds(result.retry_after)
        if retry_after is not None:
            next_delay = max(next_delay, min(retry_after, settings.CALLBACK_RETRY_AFTER_MAX))

    outcome = {
        "delivered": delivered,
        "last_error": result.error or ("" if delivered else f"HTTP {code}"),
        "now": timezone.now(),
        "next_delay": next_delay,
    }
    if not hand_written_sql():
        delivery = _record_with_orm(claim, result, **outcome)
        unwell = None  # read by _breaker_record
    else:
        delivery, unwell = _record_in_one_statement(claim, result, **outcome)
    # Apart from the delivery's statement: claims lock the host first, then its deliveries.
    if not result.refused:
        _breaker_record(claim.host, failed=_breaker_failure(result), error=delivery.last_error, unwell=unwell)
    if delivery.kind == DeliveryKind.ALERT:
        _alert_logged(delivery, number=number, code=code, error=result.error, next_delay=next_delay)
        return next_delay
    _attempt_counted(delivery, refused=result.refused, retried=next_delay is not None, first=claim.first_of_job)

    logger.log(
        logging.INFO if delivered else logging.WARNING,
        "callback %s for %s %s, attempt %d: %s -> %s%s",
        delivery.webhook_id,
        "batch" if delivery.batch_id else "job",
        delivery.batch_id or delivery.image_id,
        number,
        code or result.error,
        delivery.status,
        f" (next in {next_delay:.1f}s)" if next_delay is not None else "",
    )
    return next_delay


def _record_in_one_statement(
    claim: Claim, result: PostResult, *, delivered: bool, last_error: str, now: dt.datetime, next_delay: float | None
) -> tuple[CallbackDelivery, bool]:
    """callback_delivery_record's writes on PostgreSQL: the attempt, the delivery's new state,
    the job and the receiver's breaker flag in one statement (its own transaction outside one),
    instead of a lock, an insert, an update and a read with BEGIN and COMMIT (6 round trips on
    every callback)."""
    code = result.status_code
    over = next_delay is None
    with connection.cursor() as cursor:
        cursor.execute(
            _record_statement(),
            {
                "delivery_id": claim.delivery_id,
                "number": claim.number,
                "code": code,
                "last_error": last_error,
                # Over: delivered, or failed for good; else the next try is scheduled.
                "status": (DeliveryStatus.DELIVERED if delivered else DeliveryStatus.FAILED) if over else None,
                "over": over,
                "now": now,
                "next_attempt_at": None if over else now + dt.timedelta(seconds=next_delay),
                "started_at": result.started_at,
                "duration_ms": result.duration_ms,
                "excerpt": result.response_excerpt,  # already cut to its first KB when read
                "error": result.error,
                "host": claim.host,
            },
        )
        row = cursor.fetchone()
    if row is None:
        raise CallbackDelivery.DoesNotExist(f"callback delivery {claim.delivery_id} does not exist")
    return _recorded_delivery(row)


def _record_with_orm(
    claim: Claim, result: PostResult, *, delivered: bool, last_error: str, now: dt.datetime, next_delay: float | None
) -> CallbackDelivery:
    """The same writes with the ORM, in a transaction (the embedded SQLite stand-in)."""
    code = result.status_code
    with transaction.atomic():
        # With its job (none for an alert), which the metrics of a first delivery read.
        delivery = CallbackDelivery.objects.select_for_update(of=("self",)).select_related("image").get(id=claim.delivery_id)
        CallbackAttempt.objects.create(
            delivery=delivery,
            number=claim.number,
            started_at=result.started_at,
            duration_ms=result.duration_ms,
            status_code=code,
            response_excerpt=result.response_excerpt,
            error=result.error,
        )
        delivery.last_status_code = code
        delivery.last_error = last_error
        if delivery.attempt_count == claim.number:
            delivery.sending_until = None  # a later try (after a lost lease) holds it otherwise
        if next_delay is None:
            delivery.status = DeliveryStatus.DELIVERED if delivered else DeliveryStatus.FAILED
            delivery.finished_at = now
            delivery.next_attempt_at = None
        else:
            delivery.next_attempt_at = now + dt.timedelta(seconds=next_delay)
        # Not the body (kilobytes, never changed after it is made).
        delivery.save(update_fields=["last_status_code", "last_error", "sending_until", "status", "finished_at", "next_attempt_at"])
    return delivery


# What callback_delivery_record reads back: the delivery's fields its log, metrics and breaker
# use, and the job's that a first delivery's metrics use.
_RECORD_DELIVERY_FIELDS = {"id", "kind", "subject", "webhook_id", "image_id", "batch_id", "status", "finished_at", "last_error"}
_RECORD_JOB_FIELDS = {"id", "created_at", "detector_version_id", "variant"}


def _job_model():
    # The job model through the delivery's foreign key: this room does not import jobs.
    return CallbackDelivery._meta.get_field("image").related_model


@functools.cache
def _record_statement() -> str:
    """callback_delivery_record's statement, built once from the models' tables and columns. It
    returns the delivery's _RECORD_DELIVERY_FIELDS, the job's _RECORD_JOB_FIELDS (null for an
    alert), then the breaker's flag. Data-modifying CTEs see one snapshot: the attempt is
    inserted from the updated row (none when the delivery is gone, which the caller turns into
    DoesNotExist)."""
    return f"""
        WITH d AS (
            UPDATE {CallbackDelivery._meta.db_table} SET
                last_status_code = %(code)s,
                last_error = %(last_error)s,
                sending_until = CASE WHEN attempt_count = %(number)s THEN NULL ELSE sending_until END,
                status = COALESCE(%(status)s, status),
                finished_at = CASE WHEN %(over)s THEN %(now)s ELSE finished_at END,
                next_attempt_at = %(next_attempt_at)s
            WHERE id = %(delivery_id)s
            RETURNING *
        ), a AS (
            INSERT INTO {CallbackAttempt._meta.db_table}
                (delivery_id, number, started_at, duration_ms, status_code, response_excerpt, error)
            SELECT id, %(number)s, %(started_at)s, %(duration_ms)s, %(code)s, %(excerpt)s, %(error)s FROM d
        )
        SELECT {columns(CallbackDelivery, "d", _RECORD_DELIVERY_FIELDS)}, {columns(_job_model(), "i", _RECORD_JOB_FIELDS)},
            EXISTS (
                SELECT 1 FROM {CallbackHost._meta.db_table} h
                WHERE h.host = %(host)s AND (h.consecutive_failures > 0 OR h.open_until IS NOT NULL)
            )
        FROM d LEFT JOIN {_job_model()._meta.db_table} i ON i.id = d.image_id
    """


def _recorded_delivery(row) -> tuple[CallbackDelivery, bool]:
    """The delivery (only the fields the record reads after) with its job, from the record's
    row; and whether the receiver's breaker counts failures or is open."""
    width = len(fields(CallbackDelivery, _RECORD_DELIVERY_FIELDS))
    delivery = model_from_row(CallbackDelivery, row[:width], names=_RECORD_DELIVERY_FIELDS)
    job = row[width:-1]
    if any(value is not None for value in job):  # an alert has no job
        job_model = _job_model()
        CallbackDelivery.image.field.set_cached_value(delivery, model_from_row(job_model, job, names=_RECORD_JOB_FIELDS))
    return delivery, bool(row[-1])


def _alert_logged(delivery: CallbackDelivery, *, number: int, code: int | None, error: str, next_delay: float | None) -> None:
    """An alert's try in the log, where operators look for it (the callback metrics are the
    clients' and leave alerts out): delivered at WARNING, a retry at WARNING, given up at ERROR."""
    outcome = f"HTTP {code}" if code is not None else error
    if delivery.status == DeliveryStatus.DELIVERED:
        logger.warning("alert %s (%s) delivered on attempt %d (%s)", delivery.webhook_id, delivery.subject, number, outcome)
    elif next_delay is not None:
        logger.warning(
            "alert %s (%s), attempt %d: %s; next try in %.1fs", delivery.webhook_id, delivery.subject, number, outcome, next_delay
        )
    else:
        logger.error("alert %s (%s) not delivered, gave up after %d attempts: %s", delivery.webhook_id, delivery.subject, number, outcome)


def _breaker_record(host: str, *, failed: bool, error: str, unwell: bool | None = None) -> None:
    """Count a try against its receiver: CALLBACK_BREAKER_FAILURES failures in a row open the
    breaker for CALLBACK_BREAKER_PAUSE seconds (a failed half-open try opens it again); any
    answer that is not a failure closes it. ``unwell``: whether the receiver counts failures
    or is open, when the caller read it (None: read here)."""
    if unwell is None and not failed:
        unwell = CallbackHost.objects.filter(host=host).filter(Q(consecutive_failures__gt=0) | Q(open_until__isnull=False)).exists()
    if not failed and not unwell:
        return  # closed and counting no failure (or no row yet): an answer changes nothing
    now = timezone.now()
    with transaction.atomic():
        receiver, _ = CallbackHost.objects.select_for_update().get_or_create(host=host)
        was_open = receiver.consecutive_failures >= settings.CALLBACK_BREAKER_FAILURES
        if failed:
            receiver.consecutive_failures += 1
            receiver.last_error = error[:500]
            if receiver.consecutive_failures >= settings.CALLBACK_BREAKER_FAILURES and (
                receiver.open_until is None or receiver.open_until <= now
            ):
                receiver.open_until = now + dt.timedelta(seconds=settings.CALLBACK_BREAKER_PAUSE)
                receiver.opened_count += 1
                logger.warning(
                    "callback receiver %s: %d failed tries in a row; breaker open for %gs",
                    host,
                    receiver.consecutive_failures,
                    settings.CALLBACK_BREAKER_PAUSE,
                )
        else:
            if was_open:
                logger.warning("callback receiver %s answers again; breaker closed", host)
            receiver.consecutive_failures = 0
            receiver.open_until = None
        receiver.save()


def _attempt_counted(delivery: CallbackDelivery, *, refused: bool, retried: bool, first: bool | None = None) -> None:
    """The attempt's outcome in the metrics; a job's first delivered callback also adds the
    job's whole time (accepted to delivered). A redelivery an operator asks for days later is
    not the job's time, so it is left out."""
    if refused:
        outcome = "refused"
    elif retried:
        outcome = "retry"
    else:
        outcome = "delivered" if delivery.status == DeliveryStatus.DELIVERED else "failed"
    first = (
        outcome == "delivered"
        and delivery.image_id is not None
        and (first if first is not None else not CallbackDelivery.objects.filter(image_id=delivery.image_id, id__lt=delivery.id).exists())
    )
    metrics.callback_attempted(outcome=outcome, job=delivery.image if first else None, delivered_at=delivery.finished_at)


def callback_deliveries_due(*, grace: float = 5.0, limit: int = 500) -> list[int]:
    """Ids of pending deliveries whose next try is overdue: retries too far out for a Celery
    countdown, and tries whose worker died mid-send (their lease ran out)."""
    cutoff = timezone.now() - dt.timedelta(seconds=grace)
    return list(
        CallbackDelivery.objects.filter(status=DeliveryStatus.PENDING, next_attempt_at__lt=cutoff)
        .order_by("next_attempt_at")
        .values_list("id", flat=True)[:limit]
    )


def callback_deliveries_erase(*, image_id: uuid.UUID, reason: str) -> int:
    """For a job erased on request: cancel its pending deliveries (failed, ``reason`` as their
    last error, never tried again) and blank the frozen body of every one, since a body carries
    the job's detections. The attempts stay (times and status codes: the audit). A try already
    in flight finishes with the body it holds; its outcome is recorded but nothing follows it.
    Returns how many pending deliveries were cancelled."""
    now = timezone.now()
    with transaction.atomic():
        cancelled = CallbackDelivery.objects.filter(image_id=image_id, status=DeliveryStatus.PENDING).update(
            status=DeliveryStatus.FAILED, last_error=reason, next_attempt_at=None, finished_at=now
        )
        CallbackDelivery.objects.filter(image_id=image_id).update(body="")
    return cancelled
