"""The alert of an automatic rollback: enqueued after the commit when ROLLOUT_ALERT_URL is set,
POSTed once, signed like the callbacks, to the operator's URL (which the callbacks' address
policy does not guard)."""

import json
import logging

import pytest

from callbacks.http import post_signed
from callbacks.signing import verify_webhook
from face_detect_api.celery import app
from rollouts.alerts import rollout_alert_send
from rollouts.guardrails import ALERT_TASK
from rollouts.services import rollout_start
from tests.rollouts import rows
from workers.tasks import evaluate_rollouts, send_rollout_alert

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


def test_rollback_alert_is_enqueued_after_commit_and_arrives_signed(settings, receiver, sent, django_capture_on_commit_callbacks):
    """The rollback enqueues send_rollout_alert by name on commit; the task POSTs a verifiable body naming it."""
    settings.ROLLOUT_ALERT_URL = receiver.url("/alerts")
    # The operator's URL is called although the callbacks' address policy would refuse loopback.
    settings.CALLBACK_ALLOWED_NETWORKS = []
    rollout = failing_canary()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        result = evaluate_rollouts()
    assert result["action"] == "rollback"
    assert sent == []  # nothing before the commit
    for callback in callbacks:
        callback()
    event = rollout.events.get(action="rollback")
    assert sent == [(ALERT_TASK, (event.id,))]

    send_rollout_alert(event.id)  # what the worker runs, in-process
    (request,) = receiver.wait(1)
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


def test_no_alert_without_url(settings, sent, django_capture_on_commit_callbacks, caplog):
    """ROLLOUT_ALERT_URL empty: the rollback happens, nothing is enqueued or sent."""
    settings.ROLLOUT_ALERT_URL = ""
    rollout = failing_canary()
    with django_capture_on_commit_callbacks(execute=True):
        assert evaluate_rollouts()["action"] == "rollback"
    assert sent == []
    with caplog.at_level(logging.INFO):
        rollout_alert_send(event_id=rollout.events.get(action="rollback").id)
    assert "no ROLLOUT_ALERT_URL" in caplog.text


def test_alert_refused_by_receiver_is_logged_and_not_retried(settings, receiver, caplog):
    """A receiver answering 500 gets one POST; the failure is an ERROR line."""
    settings.ROLLOUT_ALERT_URL = receiver.url("/alerts")
    receiver.script = [500, 200]
    rollout = failing_canary()
    evaluate_rollouts()
    with caplog.at_level(logging.WARNING):
        rollout_alert_send(event_id=rollout.events.get(action="rollback").id)
    receiver.wait(1)
    assert receiver.received.empty()
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and r.name == "rollouts.alerts"]
    assert len(errors) == 1 and "HTTP 500" in errors[0] and "not retried" in errors[0]


def test_client_urls_still_obey_the_address_policy(settings, receiver):
    """post_signed without the keyword still refuses a loopback URL (only the operator's alert skips the policy)."""
    settings.CALLBACK_ALLOWED_NETWORKS = []
    refused = post_signed(receiver.url(), b"{}", webhook_id="msg_test")
    assert refused.refused and refused.status_code is None
    allowed = post_signed(receiver.url(), b"{}", webhook_id="msg_test", check_policy=False)
    assert allowed.status_code == 200
    assert len(receiver.wait(1)) == 1
