"""Cancel and expiry end to end: jobs submitted while no worker consumes the queue are canceled
over the API or pass their expires_at; a real worker started afterwards detects none of them, and
each is called back once, signed, through the outbox."""

import json
import time

import pytest
from django.conf import settings

from callbacks.signing import verify_webhook
from jobs import services
from jobs.models import Image
from tests.conftest import WorkerProcess, photo_bytes, upload, wait_terminal

pytestmark = [pytest.mark.django_db(transaction=True)]


def test_canceled_and_expired_jobs_end_without_detection_and_are_called_back(api_client, worker_env, tmp_path, receiver, s3):
    """Queued (no worker yet): one canceled over the API, one past expires_in, one left alone.
    Once a worker runs: canceled and expired as they were, with one callback each; the other completes."""

    def submit(request_id: str, **fields) -> str:
        response = upload(
            api_client, photo_bytes("astronaut_1face.png"), request_id=request_id, callback_url=receiver.url(f"/{request_id}"), **fields
        )
        assert response.status_code == 202, response.content
        return response.json()["id"]

    canceled, expiring, normal = submit("cancel-me"), submit("expire-me", expires_in=1), submit("keep-me")
    response = api_client.post(f"/api/v1/images/{canceled}/cancel/")
    assert response.status_code == 200, response.content
    assert (response.json()["status"], response.json()["error"]["code"]) == ("canceled", "canceled")
    time.sleep(1.5)  # past expiring's expires_at, before any worker could start it

    worker = WorkerProcess(tmp_path / "worker.log", worker_env).start()
    try:
        ended = {job_id: wait_terminal(job_id) for job_id in (canceled, expiring, normal)}
        callbacks = {c["path"]: c for c in receiver.wait(3)}
    finally:
        worker.stop()

    assert (ended[canceled].status, ended[canceled].error_code) == ("canceled", "canceled")
    assert (ended[expiring].status, ended[expiring].error_code) == ("expired", "expired")
    assert ended[normal].status == "completed"
    for job_id in (canceled, expiring):
        assert (ended[job_id].attempts, ended[job_id].started_at, ended[job_id].face_count) == (0, None, None)
        assert not ended[job_id].faces.exists()
        assert ended[job_id].deliveries.count() == 1
    assert set(callbacks) == {"/cancel-me", "/expire-me", "/keep-me"}
    for path, status in (("/cancel-me", "canceled"), ("/expire-me", "expired"), ("/keep-me", "completed")):
        verify_webhook(settings.CALLBACK_SIGNING_SECRET, callbacks[path]["headers"], callbacks[path]["body"])
        body = json.loads(callbacks[path]["body"])
        assert body["status"] == status
    assert receiver.received.empty()  # once each


def test_the_sweep_expires_a_queued_job_and_its_callback_is_sent(api_client, worker_env, tmp_path, receiver, s3):
    """The beat sweep ends a queued job expired while no detection worker runs; a delivery-only
    worker sends its callback."""
    response = upload(api_client, photo_bytes("coffee.png"), request_id="swept", callback_url=receiver.url("/swept"), expires_in=1)
    job_id = response.json()["id"]
    time.sleep(1.5)
    assert services.image_jobs_expire_sweep() >= 1
    deliverer = WorkerProcess(tmp_path / "deliver.log", worker_env, queues="deliver").start()
    try:
        (callback,) = receiver.wait(1)
    finally:
        deliverer.stop()
    assert json.loads(callback["body"])["status"] == "expired"
    assert Image.objects.get(id=job_id).status == "expired"
