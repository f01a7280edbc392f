"""The callback outbox, in-process against a real HTTP receiver: attempts, schedule, signatures."""

import datetime as dt
import json
import time

import pytest
from django.utils import timezone

from callbacks import services as delivery
from callbacks.models import CallbackDelivery
from callbacks.signing import verify_webhook
from jobs import services
from jobs.models import Image
from tests.conftest import photo_bytes, upload

pytestmark = [pytest.mark.django_db]


@pytest.fixture
def finished_job(api_client, s3, settings, monkeypatch, receiver, stub_detector):
    """A completed job whose callback_url is the receiver (chain not published: driven by hand)."""
    monkeypatch.setattr("jobs.services.submission.image_job_enqueue", lambda *, image_id: None)
    body = upload(api_client, photo_bytes("coffee.png"), request_id="outbox", callback_url=receiver.url()).json()
    services.image_job_detect(image_id=body["id"])
    return Image.objects.get(id=body["id"])


def run_until_done(delivery_id: int) -> None:
    """What the tasks do: try, then wait the returned delay and try again."""
    while (delay := delivery.callback_delivery_attempt(delivery_id=delivery_id)) is not None:
        time.sleep(delay)


def test_500_500_200_is_delivered_on_the_third_attempt(finished_job, receiver, settings):
    """Three attempt rows, one webhook id, every signature valid, the same body each time."""
    receiver.script = [500, 500, 200]
    outbox = services.image_job_callback_delivery(image_id=finished_job.id)
    run_until_done(outbox.id)
    outbox.refresh_from_db()
    assert outbox.status == "delivered" and outbox.attempt_count == 3
    assert [a.status_code for a in outbox.attempts.all()] == [500, 500, 200]
    requests = receiver.wait(3, timeout=5)
    assert {r["headers"]["webhook-id"] for r in requests} == {outbox.webhook_id}
    assert {r["body"] for r in requests} == {outbox.body.encode()}
    for r in requests:
        verify_webhook(settings.CALLBACK_SIGNING_SECRET, r["headers"], r["body"])
    assert json.loads(requests[0]["body"])["id"] == str(finished_job.id)


def test_the_automatic_delivery_is_made_once(finished_job):
    """A repeated deliver task finds the same delivery instead of making another."""
    first = services.image_job_callback_delivery(image_id=finished_job.id)
    assert services.image_job_callback_delivery(image_id=finished_job.id) == first
    assert CallbackDelivery.objects.count() == 1


@pytest.mark.parametrize("code", [400, 404, 410, 301])
def test_client_errors_and_redirects_stop_at_once(finished_job, receiver, code):
    """Other 4xx (410 Gone included) and 3xx: failed after one attempt."""
    receiver.script = [code]
    outbox = services.image_job_callback_delivery(image_id=finished_job.id)
    assert delivery.callback_delivery_attempt(delivery_id=outbox.id) is None
    outbox.refresh_from_db()
    assert outbox.status == "failed" and outbox.attempt_count == 1 and outbox.last_status_code == code


@pytest.mark.parametrize("code", [408, 429, 500, 503])
def test_transient_answers_are_retried(finished_job, receiver, code):
    receiver.script = [code]
    outbox = services.image_job_callback_delivery(image_id=finished_job.id)
    assert delivery.callback_delivery_attempt(delivery_id=outbox.id) is not None


def test_retry_after_is_honoured(finished_job, receiver):
    """429 with Retry-After: 7 waits 7 s, not the 0.3 s of the schedule."""
    receiver.script = [429]
    receiver.headers = {"Retry-After": "7"}
    outbox = services.image_job_callback_delivery(image_id=finished_job.id)
    assert delivery.callback_delivery_attempt(delivery_id=outbox.id) == pytest.approx(7.0)


def test_retry_after_takes_seconds_or_a_date():
    from callbacks.services import _retry_after_seconds

    assert _retry_after_seconds("7") == 7.0
    assert _retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    assert _retry_after_seconds("soon") is None and _retry_after_seconds(None) is None


def test_a_dead_receiver_is_retried_on_schedule_then_failed(finished_job, settings):
    """len(CALLBACK_RETRY_DELAYS) + 1 attempts, spaced by the schedule, then failed."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}/hook"
    Image.objects.filter(id=finished_job.id).update(callback_url=dead)
    outbox = services.image_job_callback_delivery(image_id=finished_job.id)
    run_until_done(outbox.id)
    outbox.refresh_from_db()
    attempts = list(outbox.attempts.all())
    assert outbox.status == "failed" and len(attempts) == len(settings.CALLBACK_RETRY_DELAYS) + 1
    for before, after, delay in zip(attempts, attempts[1:], settings.CALLBACK_RETRY_DELAYS):
        assert (after.started_at - before.started_at).total_seconds() >= delay * 0.9
    assert all(a.status_code is None and "ConnectionError" in a.error for a in attempts)


def test_a_delivery_in_flight_is_not_sent_twice(finished_job, receiver):
    """The lease: while one try holds the delivery, another copy of the task does nothing."""
    outbox = services.image_job_callback_delivery(image_id=finished_job.id)
    CallbackDelivery.objects.filter(id=outbox.id).update(next_attempt_at=timezone.now() + dt.timedelta(seconds=30))
    assert delivery.callback_delivery_attempt(delivery_id=outbox.id) is None
    assert receiver.received.empty()


def test_overdue_deliveries_are_found_for_the_sweeper(finished_job):
    """A pending delivery whose lease or retry time has passed is due."""
    outbox = services.image_job_callback_delivery(image_id=finished_job.id)
    assert delivery.callback_deliveries_due() == []  # due now, but within the grace
    CallbackDelivery.objects.filter(id=outbox.id).update(next_attempt_at=timezone.now() - dt.timedelta(minutes=1))
    assert delivery.callback_deliveries_due() == [outbox.id]


def test_redeliver_makes_a_new_delivery_with_a_new_id(finished_job, api_client, receiver, django_capture_on_commit_callbacks):
    """POST /redeliver/: 202, a fresh webhook id, sent when the transaction commits."""
    first = services.image_job_callback_delivery(image_id=finished_job.id)
    run_until_done(first.id)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = api_client.post(f"/api/v1/images/{finished_job.id}/redeliver/")
    assert response.status_code == 202
    assert response.json()["webhook_id"] != first.webhook_id
    assert CallbackDelivery.objects.filter(image=finished_job).count() == 2 and len(callbacks) == 1


def test_redeliver_needs_a_finished_job_with_a_callback_url(api_client, s3, monkeypatch):
    monkeypatch.setattr("jobs.services.submission.image_job_enqueue", lambda *, image_id: None)
    no_url = upload(api_client, photo_bytes("coffee.png"), request_id="no-url").json()["id"]
    Image.objects.filter(id=no_url).update(status="completed")
    response = api_client.post(f"/api/v1/images/{no_url}/redeliver/")
    assert response.status_code == 409 and response.json()["error"]["code"] == "no_callback_url"
    queued = upload(api_client, photo_bytes("chelsea_cat.png"), request_id="q", callback_url="http://127.0.0.1:9/h").json()["id"]
    response = api_client.post(f"/api/v1/images/{queued}/redeliver/")
    assert response.status_code == 409 and response.json()["error"]["code"] == "not_finished"


def test_the_representation_shows_the_delivery_and_its_attempts(finished_job, receiver, api_client):
    receiver.script = [503, 200]
    run_until_done(services.image_job_callback_delivery(image_id=finished_job.id).id)
    callback = api_client.get(f"/api/v1/images/{finished_job.id}/").json()["callback"]
    assert callback["status"] == "delivered" and callback["webhook_id"].startswith("msg_")
    assert [a["status_code"] for a in callback["attempts"]] == [503, 200]
    assert callback["delivered_at"] is not None


def test_a_callback_url_refused_at_delivery_time_fails_without_retries(finished_job, receiver, settings):
    """The policy is applied again on delivery: refused is final, not a network error to retry."""
    settings.CALLBACK_ALLOWED_NETWORKS = []
    outbox = services.image_job_callback_delivery(image_id=finished_job.id)
    assert delivery.callback_delivery_attempt(delivery_id=outbox.id) is None
    outbox.refresh_from_db()
    assert outbox.status == "failed" and outbox.attempt_count == 1 and outbox.last_error.startswith("refused")


def test_a_first_delivery_body_describes_itself(finished_job, receiver):
    """The body's callback block is the delivery carrying it, as made: the webhook-id header's id,
    pending, no attempts; not the job's state from before the delivery existed."""
    outbox = services.image_job_callback_delivery(image_id=finished_job.id)
    run_until_done(outbox.id)
    (request,) = receiver.wait(1, timeout=5)
    callback = json.loads(request["body"])["callback"]
    assert callback == {
        "url": finished_job.callback_url,
        "status": "pending",
        "webhook_id": request["headers"]["webhook-id"],
        "attempts": [],
        "delivered_at": None,
        "next_attempt_at": None,
    }
    assert request["headers"]["webhook-id"] == outbox.webhook_id


def test_a_redelivery_body_names_its_own_webhook_id(finished_job, api_client, receiver, django_capture_on_commit_callbacks):
    """A redelivery's body names the redelivery, not the delivered one before it; GET shows the
    latest delivery's live state."""
    first = services.image_job_callback_delivery(image_id=finished_job.id)
    run_until_done(first.id)
    with django_capture_on_commit_callbacks(execute=False):
        response = api_client.post(f"/api/v1/images/{finished_job.id}/redeliver/")
    again = CallbackDelivery.objects.get(webhook_id=response.json()["webhook_id"])
    run_until_done(again.id)
    first_request, again_request = receiver.wait(2, timeout=5)
    body = json.loads(again_request["body"])
    assert again_request["headers"]["webhook-id"] == again.webhook_id != first.webhook_id
    assert body["callback"]["webhook_id"] == again.webhook_id
    assert body["callback"]["status"] == "pending" and body["callback"]["attempts"] == []
    assert json.loads(first_request["body"])["callback"]["webhook_id"] == first.webhook_id
    live = api_client.get(f"/api/v1/images/{finished_job.id}/").json()["callback"]
    assert live["webhook_id"] == again.webhook_id and live["status"] == "delivered"
    assert [a["status_code"] for a in live["attempts"]] == [200]
