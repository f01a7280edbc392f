"""The Python client (sdk/python) against the real service: a live HTTP server running the API
on this run's database, S3 server and queues, a real worker (MTCNN) and a real callback receiver.
The client speaks HTTP to it exactly as it would to a deployment."""

import time
import uuid

import pytest
from django.conf import settings
from face_detect_client import (
    AuthenticationError,
    BadRequest,
    CallbackVerificationError,
    Client,
    Conflict,
    Job,
    verify_callback,
)
from face_detect_client import client as client_module

from tests.conftest import TESTDATA, WorkerProcess, photo_bytes, require

pytestmark = [pytest.mark.django_db(transaction=True)]

PHOTO = "astronaut_1face.png"


@pytest.fixture
def sdk(live_server, api_key):
    """A client of the live server, with a fresh API key."""
    require("postgres", "rabbitmq", "redis")
    with Client(live_server.url, api_key, timeout=30) as client:
        yield client


def _boxes_match(faces: list[dict], expected_xyxy: list[list[float]]) -> bool:
    return len(faces) == len(expected_xyxy) and all(
        abs(f["box"]["x"] - x1) <= 2
        and abs(f["box"]["y"] - y1) <= 2
        and abs(f["box"]["x"] + f["box"]["width"] - x2) <= 2
        and abs(f["box"]["y"] + f["box"]["height"] - y2) <= 2
        for f, (x1, y1, x2, y2) in zip(faces, expected_xyxy)
    )


# First in the module, on purpose: it runs before the module's detect worker (`worker`, module
# scoped) exists, so its jobs stay queued until canceled. A deliver-only worker sends the callback.
def test_a_queued_job_is_canceled_and_called_back(sdk, receiver, s3, worker_env, tmp_path):
    """cancel_job on a queued job: canceled, error code canceled, a verified callback saying so;
    canceling it again is Conflict job_finished."""
    deliverer = WorkerProcess(tmp_path / "deliver.log", worker_env, queues="deliver").start()
    try:
        job = sdk.submit_file(photo_bytes(PHOTO), request_id="sdk-cancel", callback_url=receiver.url("/hook/cancel"))
        canceled = sdk.cancel_job(job)
        assert canceled.status == "canceled" and canceled.error.code == "canceled" and canceled.is_terminal
        assert sdk.wait(job, timeout=5).status == "canceled"
        with pytest.raises(Conflict) as caught:
            sdk.cancel_job(job.id)
        assert caught.value.code == "job_finished"

        [callback] = receiver.wait(1)
        payload = verify_callback(settings.CALLBACK_SIGNING_SECRET, callback["headers"], callback["body"])
        assert (payload["id"], payload["status"], payload["error"]["code"]) == (job.id, "canceled", "canceled")
    finally:
        deliverer.stop()


def test_a_batch_is_canceled_before_its_items_start(sdk, photoserver, s3):
    """cancel_batch with no detect worker running: every item ends canceled, and the batch with them."""
    items = [{"request_id": f"sdk-cancel-{n}", "image_url": photoserver.url(f"/photos/{PHOTO}?{n}")} for n in range(3)]
    batch = sdk.submit_batch(items)
    assert (batch.status, batch.item_count) == ("running", 3)
    canceled = sdk.cancel_batch(batch)
    assert canceled.status == "canceled" and canceled.counts == {"canceled": 3}
    assert sorted(job.request_id for job in sdk.iter_batch_results(batch) if job.status == "canceled") == sorted(
        i["request_id"] for i in items
    )


def test_an_uploaded_photo_is_detected_and_its_signed_callback_verifies(sdk, worker, receiver, s3, manifest):
    """submit_file(path) -> wait -> completed with MTCNN's faces; the callback verifies with
    standardwebhooks (verify_callback) and carries the job as GET shows it."""
    entry = next(e for e in manifest if e["file"] == PHOTO)
    job = sdk.submit_file(TESTDATA / PHOTO, request_id="sdk-upload", callback_url=receiver.url("/hook/sdk"))
    assert job.status == "queued" and job.request_id == "sdk-upload"

    done = sdk.wait(job, timeout=180, poll_interval=0.2, max_poll_interval=2)
    assert done.status == "completed", done.error
    assert (done.width, done.height) == (entry["width"], entry["height"])
    assert done.face_count == len(entry["mtcnn_boxes_xyxy_default_settings"]) >= entry["faces"]
    assert _boxes_match(done.faces, entry["mtcnn_boxes_xyxy_default_settings"])
    assert done.model_version.startswith("mtcnn@")

    [callback] = receiver.wait(1)
    payload = verify_callback(settings.CALLBACK_SIGNING_SECRET, callback["headers"], callback["body"])
    assert payload["id"] == job.id and payload["status"] == "completed"
    assert Job.from_json(payload).faces == done.faces
    assert payload["callback"]["webhook_id"] == callback["headers"]["webhook-id"]

    # Another job's id in the same body, or another secret: refused.
    tampered = callback["body"].replace(job.id.encode(), str(uuid.uuid4()).encode())
    assert tampered != callback["body"]
    with pytest.raises(CallbackVerificationError):
        verify_callback(settings.CALLBACK_SIGNING_SECRET, callback["headers"], tampered)
    with pytest.raises(CallbackVerificationError):
        verify_callback("whsec_c2VjcmV0LW9mLXNvbWVib2R5LWVsc2UtMzJieXRlcw==", callback["headers"], callback["body"])


def test_resubmitting_the_same_request_id_returns_the_same_job(sdk, worker, s3):
    """Bytes or an open file, the same photo under the same request_id is one job: a retried upload is safe."""
    first = sdk.submit_file(photo_bytes(PHOTO), request_id="sdk-again", filename=PHOTO)
    with open(TESTDATA / PHOTO, "rb") as fh:
        again = sdk.submit_file(fh, request_id="sdk-again")
    assert again.id == first.id
    assert sdk.wait(first, timeout=180, poll_interval=0.2).status == "completed"


def test_the_apis_errors_arrive_typed_with_their_code_and_field(sdk, live_server, s3):
    """400s name the field (labels, image); a wrong key is an AuthenticationError."""
    with pytest.raises(BadRequest) as caught:
        sdk.submit_file(photo_bytes(PHOTO), labels="Not A Label")
    assert (caught.value.status_code, caught.value.code, caught.value.field) == (400, "invalid", "labels")
    with pytest.raises(BadRequest) as caught:
        sdk.submit_file(b"this is not a photo", filename="notes.txt")
    assert (caught.value.code, caught.value.field) == ("image_unreadable", "image")
    assert caught.value.request_id  # the service's X-Request-ID, to quote to its operators

    with Client(live_server.url, "not-a-key") as stranger, pytest.raises(AuthenticationError) as caught:
        stranger.get_job(str(uuid.uuid4()))
    assert caught.value.code == "invalid_api_key"


def test_a_rate_limited_call_is_retried_after_the_services_retry_after(sdk, s3, settings, monkeypatch):
    """With 1 request a second allowed, calls in quick succession get real 429s with Retry-After;
    the client sleeps that long and each retry succeeds."""
    slept = []
    monkeypatch.setattr(client_module, "_sleep", lambda seconds: (slept.append(seconds), time.sleep(seconds)))
    settings.API_RATE_LIMIT = "1/second"
    job = sdk.submit_file(photo_bytes(PHOTO), request_id="sdk-throttled")
    # GETs take milliseconds: of three in a row, at least two come within a second of the one before.
    assert [sdk.get_job(job.id).id for _ in range(3)] == [job.id] * 3
    assert len(slept) >= 2 and set(slept) == {1.0}  # DRF's Retry-After for a one-second window


def test_a_photo_by_url_is_fetched_and_detected(sdk, worker, photoserver, s3, manifest):
    """submit_url -> the worker fetches the photo from a real HTTP server -> completed with MTCNN's faces."""
    entry = next(e for e in manifest if e["file"] == PHOTO)
    url = photoserver.url(f"/photos/{PHOTO}")
    job = sdk.submit_url(url, request_id="sdk-url", labels=["face"])  # sent as JSON: labels as "face"
    done = sdk.wait(job, timeout=180, poll_interval=0.2, max_poll_interval=2)
    assert done.status == "completed", done.error
    assert done.image_url == url and done.labels == ["face"] and photoserver.count(f"/photos/{PHOTO}") >= 1
    assert _boxes_match(done.faces, entry["mtcnn_boxes_xyxy_default_settings"])


def test_a_url_that_cannot_be_fetched_ends_the_job_failed(sdk, worker, photoserver, s3):
    """wait() returns a failed job (it does not raise): error code image_fetch_failed."""
    done = sdk.wait(sdk.submit_url(photoserver.url("/status/404"), request_id="sdk-url-404"), timeout=180, poll_interval=0.2)
    assert done.status == "failed" and done.error.code == "image_fetch_failed"


def test_a_batch_is_detected_its_results_stream_and_its_callback_verifies(sdk, worker, photoserver, receiver, s3, manifest):
    """submit_batch of three photos by URL -> wait_batch -> iter_batch_results gives each job with
    its faces; the batch.completed callback verifies and counts them."""
    entries = [e for e in manifest if e["file"] in (PHOTO, "obama_1face.jpg", "gravel_texture.png")]
    batch = sdk.submit_batch(
        # A batch item's labels travel as a JSON list: the service takes them so.
        [{"request_id": f"sdk-batch-{e['file']}", "image_url": photoserver.url(f"/photos/{e['file']}"), "labels": "face"} for e in entries],
        callback_url=receiver.url("/hook/batch"),
    )
    done = sdk.wait_batch(batch, timeout=300, poll_interval=0.5, max_poll_interval=3)
    assert done.status == "completed" and done.counts == {"completed": 3}

    jobs = {job.request_id: job for job in sdk.iter_batch_results(batch)}
    assert set(jobs) == {f"sdk-batch-{e['file']}" for e in entries}
    for entry in entries:
        job = jobs[f"sdk-batch-{entry['file']}"]
        assert job.status == "completed" and job.batch_id == batch.id and job.labels == ["face"]
        assert _boxes_match(job.faces, entry["mtcnn_boxes_xyxy_default_settings"]), entry["file"]

    callbacks = [verify_callback(settings.CALLBACK_SIGNING_SECRET, c["headers"], c["body"]) for c in receiver.wait(1)]
    assert callbacks[0]["type"] == "batch.completed" and callbacks[0]["batch_id"] == batch.id
    assert callbacks[0]["counts"] == {"completed": 3} and callbacks[0]["item_count"] == 3
