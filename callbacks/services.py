"""Callbacks as an outbox: a delivery row per message, an attempt row per HTTP try.

A delivery's body is frozen when it is made, so every retry sends the same bytes under the same
webhook id (Standard Webhooks), signed afresh with the current timestamp. Trying a delivery first
takes a lease on it (``next_attempt_at`` pushed ahead), so a duplicate task or the sweeper cannot
send it twice at once, and a worker that dies mid-send leaves it to be tried again.
"""

import datetime as dt
import email.utils
import json
import logging
import random
import uuid
from collections.abc import Callable
from typing import Any

from celery import current_app
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from core import metrics

from .http import post_signed
from .models import CallbackAttempt, CallbackDelivery, DeliveryStatus

logger = logging.getLogger(__name__)

# The Celery task that tries one delivery (workers/tasks.py), by name.
DELIVER_CALLBACK_TASK = "workers.tasks.deliver_callback"


def new_webhook_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def callback_delivery_create(
    *, image_id: uuid.UUID, url: str, render: Callable[[CallbackDelivery], dict[str, Any]]
) -> CallbackDelivery:
    """A new pending delivery to ``url`` whose frozen body is ``render(delivery)`` as compact
    JSON. The row is built first, unsaved, and the body rendered from it, so the body can
    describe the very delivery that carries it (its webhook id, pending, no attempts)."""
    outbox_row = CallbackDelivery(image_id=image_id, webhook_id=new_webhook_id(), url=url)
    outbox_row.body = json.dumps(render(outbox_row), separators=(",", ":"), sort_keys=True)
    outbox_row.next_attempt_at = timezone.now()  # after rendering: the body shows nothing scheduled
    outbox_row.save(force_insert=True)
    return outbox_row


def callback_delivery_enqueue(*, delivery_id: int) -> None:
    """Try the delivery on a worker once the transaction that made it commits (the task is named,
    not imported: services sit below the task modules)."""
    transaction.on_commit(lambda: current_app.send_task(DELIVER_CALLBACK_TASK, args=(delivery_id,)))


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
        when = when.replace(tzinfo=dt.timezone.utc)
    return max(0.0, (when - timezone.now()).total_seconds())


def _lease_seconds() -> float:
    # Long enough for one POST to finish or time out.
    return settings.CALLBACK_CONNECT_TIMEOUT + settings.CALLBACK_READ_TIMEOUT + 30


def callback_delivery_attempt(*, delivery_id: int) -> float | None:
    """Try a due delivery once and record the attempt.

    Returns the seconds until the next try, or None when there is nothing more to do now
    (delivered, failed for good, not due, or being tried elsewhere). 2xx is delivered. Connection
    errors, timeouts, 408, 429 and 5xx are retried after CALLBACK_RETRY_DELAYS (or a later
    Retry-After); anything else fails at once: other 4xx (410 Gone included), 3xx (redirects
    are never followed), and a URL whose host now resolves to a refused address.
    """
    now = timezone.now()
    with transaction.atomic():
        delivery = CallbackDelivery.objects.select_for_update().get(id=delivery_id)
        if delivery.status != DeliveryStatus.PENDING or (delivery.next_attempt_at and delivery.next_attempt_at > now):
            return None
        delivery.attempt_count += 1
        delivery.next_attempt_at = now + dt.timedelta(seconds=_lease_seconds())
        delivery.save(update_fields=["attempt_count", "next_attempt_at"])
    number = delivery.attempt_count

    result = post_signed(delivery.url, delivery.body.encode(), webhook_id=delivery.webhook_id)
    code = result.status_code
    delivered = code is not None and 200 <= code < 300
    retryable = not delivered and not result.refused and (code is None or code in (408, 429) or code >= 500)
    delays = settings.CALLBACK_RETRY_DELAYS
    next_delay = None
    if retryable and number <= len(delays):
        # Jitter spreads the retries of many deliveries to one receiver that just came back.
        next_delay = delays[number - 1] * random.uniform(0.9, 1.1)
        retry_after = _retry_after_seconds(result.retry_after)
        if retry_after is not None:
            next_delay = max(next_delay, min(retry_after, settings.CALLBACK_RETRY_AFTER_MAX))

    with transaction.atomic():
        delivery = CallbackDelivery.objects.select_for_update().get(id=delivery_id)
        CallbackAttempt.objects.create(
            delivery=delivery,
            number=number,
            started_at=result.started_at,
            duration_ms=result.duration_ms,
            status_code=code,
            response_excerpt=result.response_excerpt,  # already cut to its first KB when read
            error=result.error,
        )
        delivery.last_status_code = code
        delivery.last_error = result.error or ("" if delivered else f"HTTP {code}")
        if next_delay is None:
            delivery.status = DeliveryStatus.DELIVERED if delivered else DeliveryStatus.FAILED
            delivery.finished_at = timezone.now()
            delivery.next_attempt_at = None
        else:
            delivery.next_attempt_at = timezone.now() + dt.timedelta(seconds=next_delay)
        delivery.save()
    _attempt_counted(delivery, refused=result.refused, retried=next_delay is not None)

    logger.log(
        logging.INFO if delivered else logging.WARNING,
        "callback %s for job %s, attempt %d: %s -> %s%s",
        delivery.webhook_id,
        delivery.image_id,
        number,
        code or result.error,
        delivery.status,
        f" (next in {next_delay:.1f}s)" if next_delay is not None else "",
    )
    return next_delay


def _attempt_counted(delivery: CallbackDelivery, *, refused: bool, retried: bool) -> None:
    """The attempt's outcome in the metrics; a job's first delivered callback also adds the
    job's whole time (accepted to delivered). A redelivery an operator asks for days later is
    not the job's time, so it is left out."""
    if refused:
        outcome = "refused"
    elif retried:
        outcome = "retry"
    else:
        outcome = "delivered" if delivery.status == DeliveryStatus.DELIVERED else "failed"
    first = outcome == "delivered" and not CallbackDelivery.objects.filter(image_id=delivery.image_id, id__lt=delivery.id).exists()
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
