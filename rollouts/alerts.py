"""Announcing an automatic rollback: a POST to ROLLOUT_ALERT_URL, signed like the callbacks.

The body is JSON; the headers are Standard Webhooks' (webhook-id, webhook-timestamp,
webhook-signature) made with CALLBACK_SIGNING_SECRET, so a receiver verifies it with
callbacks.signing.verify_webhook exactly as it verifies a job's callback. The webhook id is the
event's own (``rollout-event-<id>``): a receiver that sees it twice knows it is the same alert.

One try, no retries: the alert is a notification, not the record. The rollback itself is
already done and stays in the rollout's event log (API, admin), with an ERROR log line; an
alert that did not arrive is logged at ERROR too.
"""

import json
import logging
from typing import Any

from django.conf import settings

from callbacks.http import post_signed

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


def rollout_alert_send(*, event_id: int) -> None:
    """POST the event to ROLLOUT_ALERT_URL once (nothing when it is not set). Never raises for
    the receiver's answer or the network: the outcome is logged."""
    url = settings.ROLLOUT_ALERT_URL
    if not url:
        logger.info("rollout event %s: no ROLLOUT_ALERT_URL, no alert sent", event_id)
        return
    event = RolloutEvent.objects.select_related("rollout").filter(id=event_id).first()
    if event is None:
        logger.warning("rollout event %s does not exist; no alert sent", event_id)
        return
    body = json.dumps(rollout_alert_body(event), separators=(",", ":"), sort_keys=True).encode()
    # The URL is the operator's own (often an internal address), so the callbacks' public-address
    # policy, which guards URLs that clients give, does not apply to it.
    result = post_signed(url, body, webhook_id=f"rollout-event-{event.id}", check_policy=False)
    if result.status_code is not None and 200 <= result.status_code < 300:
        logger.warning("rollout %s: %s alert delivered (HTTP %d in %d ms)", event.rollout_id, event.action, result.status_code, result.duration_ms)
    else:
        outcome = f"HTTP {result.status_code}" if result.status_code is not None else result.error
        logger.error("rollout %s: %s alert not delivered, not retried: %s", event.rollout_id, event.action, outcome)
