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
    Job,
    verify_callback,
)
from face_detect_client import client as client_module

from tests.conftest import TESTDATA, photo_bytes, require

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
    """With 1 request a second allowed, a second call at once gets a real 429 with Retry-After;
    the client sleeps that long and its retry succeeds."""
    slept = []
    monkeypatch.setattr(client_module, "_sleep", lambda seconds: (slept.append(seconds), time.sleep(seconds)))
    settings.API_RATE_LIMIT = "1/second"
    job = sdk.submit_file(photo_bytes(PHOTO), request_id="sdk-throttled")
    assert sdk.get_job(job.id).id == job.id
    assert slept == [1.0]  # DRF's Retry-After for a one-second window
