"""Announcing an automatic rollback: a POST to ROLLOUT_ALERT_URL, signed like the callbacks and
delivered through the same outbox (callbacks/): a delivery row made in the rollback's own
transaction, so a committed rollback always has its alert, then tried by the delivery workers'
senders, retried on CALLBACK_RETRY_DELAYS and recorded attempt by attempt like a job's callback.

The body is JSON; the headers are Standard Webhooks' (webhook-id, webhook-timestamp,
webhook-signature) made with CALLBACK_SIGNING_SECRET, so a receiver verifies it with
callbacks.signing.verify_webhook exactly as it verifies a job's callback. The webhook id is the
event's own (``rollout-event-<id>``), the same on every try: a receiver that sees it twice knows
it is the same alert.

The URL is the operator's own (often an internal address), so the public-address policy that
guards the URLs clients give does not apply to it.
"""

import json
import logging
from typing import Any

from django.conf import settings

from callbacks.models import CallbackDelivery
from callbacks.services import alert_delivery_create

from .models import RolloutEvent

logger = logging.getLogger(__name__)


def rollout_alert_body(event: RolloutEvent) -> dict[str, Any]:
    """What the alert says: which rollout, what happened to it, why, and the figures."""
    rollout = event.rollout
    return {
        "type": f"rollout.{event.action}",
        "rollout_id": str(rollout.id),
        "mode": rollout.mode,
        "baseline": rollout.baseline_id,
        "candidate": rollout.candidate_id,
        "status": rollout.status,
        "weight": rollout.weight,
        "action": event.action,
        "actor": event.actor,
        "reason": event.reason,
        "figures": event.figures,
        "at": event.at.isoformat(),
    }


def rollout_alert_webhook_id(event_id: int) -> str:
    return f"rollout-event-{event_id}"


def rollout_alert_create(*, event: RolloutEvent) -> CallbackDelivery | None:
    """The alert of ``event`` as a pending outbox delivery to ROLLOUT_ALERT_URL (None when it is
    not set). Call it in the transaction that records the event: the alert then exists exactly
    when the event does. Idempotent: the event's alert is made once."""
    url = settings.ROLLOUT_ALERT_URL
    if not url:
        logger.info("rollout event %s: no ROLLOUT_ALERT_URL, no alert sent", event.id)
        return None
    body = json.dumps(rollout_alert_body(event), separators=(",", ":"), sort_keys=True).encode()
    return alert_delivery_create(
        url=url,
        body=body,
        webhook_id=rollout_alert_webhook_id(event.id),
        subject=f"rollout {event.rollout_id} {event.action}, event {event.id}",
    )


def rollout_alert_send(*, event_id: int) -> CallbackDelivery | None:
    """The alert delivery of a rollout event, made now if it was not made with the event (a
    message published by a release that sent alerts in one try). None when there is no such
    event or no ROLLOUT_ALERT_URL. The caller hands the delivery to a sender."""
    event = RolloutEvent.objects.select_related("rollout").filter(id=event_id).first()
    if event is None:
        logger.warning("rollout event %s does not exist; no alert sent", event_id)
        return None
    return rollout_alert_create(event=event)
