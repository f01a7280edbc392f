"""The alert of an automatic rollback: a delivery in the callbacks' outbox, made in the rollback's
own transaction when ROLLOUT_ALERT_URL is set, signed like the callbacks, retried on their
schedule and recorded attempt by attempt, to the operator's URL (which the callbacks' address
policy does not guard)."""

import json
import logging
import time

import pytest
from django.db import close_old_connections

from callbacks.http import post_signed
from callbacks.models import CallbackDelivery
from callbacks.sender import Sender
from callbacks.services import DELIVER_CALLBACK_TASK, callback_delivery_attempt
from callbacks.signing import verify_webhook
from face_detect_api.celery import app
from rollouts.alerts import rollout_alert_send
from rollouts.services import rollout_start
from tests.rollouts import rows
from workers.tasks import evaluate_rollouts

pytestmark = pytest.mark.django_db


@pytest.fixture
def sent(monkeypatch):
    """The tasks published by name (recorded instead of going to the broker)."""
    published = []
    monkeypatch.setattr(app, "send_task", lambda name, args=(), **kwargs: published.append((name, tuple(args))))
    return published


def failing_canary():
    """A canary whose candidate fails half its jobs, rolled back at the first evaluation."""
    rollout = rollout_start(
        candidate="mtcnn@1.1.0",
        mode="canary",
        actor="operator:test",
        stages=[{"weight": 50, "min_seconds": 3600, "min_jobs": 1000}],
        guardrails={"error_rate_max": 0.1, "min_jobs": 5, "consecutive_breaches": 1},
    )
    rows.jobs(rollout, "baseline", 10)
    rows.jobs(rollout, "candidate", 10, failed=5)
    return rollout


def run_until_done(delivery_id: int) -> None:
    """What the senders do for one delivery: try, wait the returned delay, try again."""
    while (delay := callback_delivery_attempt(delivery_id=delivery_id)) is not None:
        time.sleep(delay)


def assert_is_the_alert(request, rollout, event, settings) -> None:
    """The body and headers the alert has always had, verifiable with the callbacks' secret."""
    assert request["path"] == "/alerts"
    verify_webhook(settings.CALLBACK_SIGNING_SECRET, request["headers"], request["body"])
    assert request["headers"]["webhook-id"] == f"rollout-event-{event.id}"
    body = json.loads(request["body"])
    assert body["type"] == "rollout.rollback" and body["action"] == "rollback"
    assert body["rollout_id"] == str(rollout.id) and body["mode"] == "canary"
    assert (body["baseline"], body["candidate"], body["status"], body["weight"]) == ("mtcnn@1.0.0", "mtcnn@1.1.0", "rolled_back", 0)
    assert body["actor"] == "system:guardrails" and "error_rate_max" in body["reason"]
    assert body["figures"]["window"]["candidate"]["failed"] == 5
    assert body["at"] == event.at.isoformat()


def test_rollback_makes_its_alert_delivery_and_asks_for_a_try_after_commit(settings, receiver, sent, django_capture_on_commit_callbacks):
    """The rollback's transaction holds the alert's delivery row; its try is asked for on commit; it arrives signed."""
    settings.ROLLOUT_ALERT_URL = receiver.url("/alerts")
    # The operator's URL is called although the callbacks' address policy would refuse loopback.
    settings.CALLBACK_ALLOWED_NETWORKS = []
    rollout = failing_canary()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        result = evaluate_rollouts()
    assert result["action"] == "rollback"
    event = rollout.events.get(action="rollback")
    alert = CallbackDelivery.objects.get(webhook_id=f"rollout-event-{event.id}")
    assert (alert.kind, alert.image_id, alert.url, alert.status) == ("alert", None, settings.ROLLOUT_ALERT_URL, "pending")
    assert str(rollout.id) in alert.subject
    assert sent == []  # nothing before the commit
    for callback in callbacks:
        callback()
    assert sent == [(DELIVER_CALLBACK_TASK, (alert.id,))]

    run_until_done(alert.id)  # what the delivery worker's sender does
    (request,) = receiver.wait(1)
    assert_is_the_alert(request, rollout, event, settings)
    alert.refresh_from_db()
    assert alert.status == "delivered" and alert.attempt_count == 1


def test_no_alert_without_url(settings, sent, django_capture_on_commit_callbacks, caplog):
    """ROLLOUT_ALERT_URL empty: the rollback happens, no delivery is made, nothing is enqueued."""
    settings.ROLLOUT_ALERT_URL = ""
    rollout = failing_canary()
    with django_capture_on_commit_callbacks(execute=True):
        assert evaluate_rollouts()["action"] == "rollback"
    assert sent == [] and not CallbackDelivery.objects.filter(kind="alert").exists()
    with caplog.at_level(logging.INFO):
        assert rollout_alert_send(event_id=rollout.events.get(action="rollback").id) is None
    assert "no ROLLOUT_ALERT_URL" in caplog.text


def test_an_alert_is_made_once_per_event(settings, receiver):
    """The task that older releases published finds the alert the rollback made: no second delivery."""
    settings.ROLLOUT_ALERT_URL = receiver.url("/alerts")
    rollout = failing_canary()
    evaluate_rollouts()
    event = rollout.events.get(action="rollback")
    made = CallbackDelivery.objects.get(kind="alert")
    assert rollout_alert_send(event_id=event.id) == made
    assert CallbackDelivery.objects.filter(kind="alert").count() == 1


def test_an_alert_that_keeps_failing_is_given_up_with_an_error(settings, receiver, caplog):
    """A receiver answering 500 every time gets every scheduled try, each recorded; giving up is an ERROR line."""
    settings.ROLLOUT_ALERT_URL = receiver.url("/alerts")
    tries = len(settings.CALLBACK_RETRY_DELAYS) + 1
    receiver.script = [500] * tries
    rollout = failing_canary()
    evaluate_rollouts()
    alert = CallbackDelivery.objects.get(kind="alert")
    with caplog.at_level(logging.WARNING):
        run_until_done(alert.id)
    got = receiver.wait(tries)
    assert {request["headers"]["webhook-id"] for request in got} == {f"rollout-event-{rollout.events.get(action='rollback').id}"}
    alert.refresh_from_db()
    assert alert.status == "failed" and [a.status_code for a in alert.attempts.all()] == [500] * tries
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and r.name == "callbacks.services"]
    assert len(errors) == 1 and alert.webhook_id in errors[0] and "HTTP 500" in errors[0]


@pytest.mark.django_db(transaction=True)
def test_an_alert_receiver_that_fails_the_first_try_gets_it_on_a_retry_signed(settings, receiver):
    """Through a real threaded sender (claims, per-host caps, the retry schedule): 500, then the same alert again, delivered."""
    settings.ROLLOUT_ALERT_URL = receiver.url("/alerts")
    settings.CALLBACK_ALLOWED_NETWORKS = []  # not for alerts: the operator's URL is called all the same
    receiver.script = [500, 200]
    rollout = failing_canary()
    assert evaluate_rollouts()["action"] == "rollback"
    event = rollout.events.get(action="rollback")
    alert = CallbackDelivery.objects.get(kind="alert")

    sender = Sender(threads=2, poll=0.1, log_fields=None).start()
    try:
        sender.wake(alert.id)
        first, second = receiver.wait(2, timeout=60)
        deadline = time.monotonic() + 30
        while CallbackDelivery.objects.get(id=alert.id).status == "pending" and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        sender.stop()
        close_old_connections()
    assert (first["answered"], second["answered"]) == (500, 200)
    assert first["body"] == second["body"]
    assert first["headers"]["webhook-id"] == second["headers"]["webhook-id"]
    for request in (first, second):
        assert_is_the_alert(request, rollout, event, settings)
    alert.refresh_from_db()
    assert alert.status == "delivered" and [a.status_code for a in alert.attempts.all()] == [500, 200]


def test_client_urls_still_obey_the_address_policy(settings, receiver):
    """post_signed without the keyword still refuses a loopback URL (only the operator's alert skips the policy)."""
    settings.CALLBACK_ALLOWED_NETWORKS = []
    refused = post_signed(receiver.url(), b"{}", webhook_id="msg_test")
    assert refused.refused and refused.status_code is None
    allowed = post_signed(receiver.url(), b"{}", webhook_id="msg_test", check_policy=False)
    assert allowed.status_code == 200
    assert len(receiver.wait(1)) == 1
