"""POST /api/v1/images/: what is accepted, and what is refused without leaving anything behind."""

import io

import pytest
from PIL import Image as PILImage

from jobs.models import Image
from storage import s3 as storage
from tests.conftest import photo_bytes, upload

pytestmark = [pytest.mark.django_db]


def assert_nothing_left():
    assert Image.objects.count() == 0
    assert storage.storage_list() == []


def assert_error(response, status: int, field: str | None, code: str | None = None) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert error["field"] == field
    assert error["message"]
    if code:
        assert error["code"] == code
    return error


def test_valid_upload_is_accepted_stored_and_enqueued_after_commit(api_client, s3, django_capture_on_commit_callbacks, monkeypatch):
    """202 with id, status_url and Location; the object is stored under a server-chosen key."""
    enqueued = []
    monkeypatch.setattr("jobs.services.submission.image_job_enqueue", lambda *, image_id: enqueued.append(image_id))
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = upload(
            api_client,
            photo_bytes("astronaut_1face.png"),
            name="../../etc/passwd.png",
            request_id="req-1",
            callback_url="http://127.0.0.1:9/hook",
        )
    assert response.status_code == 202
    body = response.json()
    assert set(body) == {"id", "request_id", "status", "status_url", "created_at"}
    assert body["status"] == "queued" and body["request_id"] == "req-1"
    assert response["Location"] == body["status_url"] == f"http://testserver/api/v1/images/{body['id']}/"

    image = Image.objects.get(id=body["id"])
    assert image.original_key.startswith("originals/") and image.original_key.endswith(f"{image.id}.png")
    assert "passwd" not in image.original_key
    assert storage.storage_list() == [image.original_key]
    assert (image.width, image.height, image.callback_url) == (512, 512, "http://127.0.0.1:9/hook")

    # The chain is published only once the transaction commits.
    assert enqueued == [] and len(callbacks) == 1
    callbacks[0]()
    assert enqueued == [image.id]


def test_missing_image_is_a_400_naming_image(api_client, s3):
    """No image part."""
    assert_error(api_client.post("/api/v1/images/", {"request_id": "r"}, format="multipart"), 400, "image", "required")
    assert_nothing_left()


def test_missing_request_id_is_a_400_naming_request_id(api_client, s3):
    """No request_id."""
    assert_error(upload(api_client, photo_bytes("coffee.png")), 400, "request_id", "required")
    assert_nothing_left()


@pytest.mark.parametrize(
    "request_id", ["", "   ", "\u00a0\u3000", "a" * 129, "tab\there", "new\nline", "nul\x00", "del\x7f", "c1\x85", "rlm\u200f"]
)
def test_bad_request_id_is_a_400(api_client, s3, request_id):
    """request_id: 1 to 128 characters, not all whitespace, no control or bidi formatting characters."""
    assert_error(upload(api_client, photo_bytes("coffee.png"), request_id=request_id), 400, "request_id")
    assert_nothing_left()


@pytest.mark.parametrize("request_id", ["é-ü", "😀" * 128, " padded ", "nbsp\u00a0inside", "zero\u200bwidth", "unassigned\U000e0080"])
def test_any_characters_but_controls_make_a_request_id(api_client, s3, monkeypatch, request_id):
    """Kept exactly as given; characters str.isprintable() refused (other spaces, format
    characters, unassigned code points) are accepted now, as the schema's pattern says."""
    monkeypatch.setattr("jobs.services.submission.image_job_enqueue", lambda *, image_id: None)
    response = upload(api_client, photo_bytes("coffee.png"), request_id=request_id)
    assert response.status_code == 202, response.content
    assert response.json()["request_id"] == request_id == Image.objects.get().request_id


@pytest.mark.parametrize(
    "data",
    [b"", b"plain text, not an image", b"%PDF-1.4 not an image", photo_bytes("grace_hopper_1face.jpg")[:5000]],
    ids=["empty", "text", "pdf", "truncated-jpeg"],
)
def test_a_file_that_is_not_a_whole_image_is_a_400(api_client, s3, data):
    """Empty, not an image, or truncated: refused, named, nothing stored."""
    assert_error(upload(api_client, data, name="photo.jpg", request_id="r"), 400, "image")
    assert_nothing_left()


def test_image_sent_as_a_text_field_is_a_400(api_client, s3):
    """The image must be a file part."""
    response = api_client.post("/api/v1/images/", {"image": "not-a-file", "request_id": "r"}, format="multipart")
    assert_error(response, 400, "image")
    assert_nothing_left()


@pytest.mark.parametrize(
    "url", ["not a url", "ftp://example.com/x", "javascript:alert(1)", "http://", "https://exa mple.com/", "//example.com/x"]
)
def test_malformed_callback_url_is_a_400(api_client, s3, url):
    """callback_url: an absolute http or https URL."""
    assert_error(upload(api_client, photo_bytes("coffee.png"), request_id="r", callback_url=url), 400, "callback_url")
    assert_nothing_left()


def test_oversized_upload_is_a_413(api_client, s3, settings):
    """Beyond MAX_UPLOAD_BYTES."""
    settings.MAX_UPLOAD_BYTES = 1000
    assert_error(upload(api_client, photo_bytes("coffee.png"), request_id="r"), 413, "image", "file_too_large")
    assert_nothing_left()


def test_too_many_pixels_is_refused_from_the_header(api_client, s3, settings):
    """Beyond MAX_IMAGE_PIXELS: 413, decided before decoding."""
    settings.MAX_IMAGE_PIXELS = 100 * 100
    out = io.BytesIO()
    PILImage.new("RGB", (200, 200)).save(out, "PNG")
    assert_error(upload(api_client, out.getvalue(), request_id="r"), 413, "image", "image_too_large")
    assert_nothing_left()


def test_storage_down_is_a_503_and_leaves_no_row(api_client, s3, settings):
    """S3 unreachable at submit time: a clear 503, no job."""
    settings.S3_ENDPOINT = "127.0.0.1:9"
    storage.reset_clients()
    try:
        error = assert_error(upload(api_client, photo_bytes("coffee.png"), request_id="r"), 503, None)
    finally:
        settings.S3_ENDPOINT = s3.endpoint
        storage.reset_clients()
    assert error["code"] == "storage_unavailable"
    assert_nothing_left()


def test_the_database_gone_at_the_insert_is_a_503_with_retry_after_and_leaves_nothing(api_client, s3, monkeypatch, settings):
    """The photo is stored, then the row cannot be written: 503, Retry-After, no object left, no
    driver text (the whole path against a stopped server: tests/e2e/test_database_outage.py)."""
    from django.db import OperationalError

    def gone(image):
        raise OperationalError("connection to server at db.internal (10.0.0.5), port 5432 failed")

    monkeypatch.setattr("jobs.services.submission._image_insert", gone)
    response = upload(api_client, photo_bytes("coffee.png"), request_id="db-gone")
    error = assert_error(response, 503, None, "database_unavailable")
    assert response["Retry-After"] == str(settings.UNAVAILABLE_RETRY_AFTER)
    assert "db.internal" not in response.content.decode() and "5432" not in error["message"]
    assert_nothing_left()


def test_storage_down_answers_with_retry_after_too(api_client, s3, settings):
    settings.S3_ENDPOINT = "127.0.0.1:9"
    storage.reset_clients()
    try:
        response = upload(api_client, photo_bytes("coffee.png"), request_id="r")
    finally:
        settings.S3_ENDPOINT = s3.endpoint
        storage.reset_clients()
    assert response.status_code == 503 and response["Retry-After"] == str(settings.UNAVAILABLE_RETRY_AFTER)


def test_the_same_submission_again_returns_the_existing_job(api_client, s3, monkeypatch):
    """Idempotent per request_id: same photo, same callback_url -> 200 with the same id."""
    monkeypatch.setattr("jobs.services.submission.image_job_enqueue", lambda *, image_id: None)
    first = upload(api_client, photo_bytes("coffee.png"), request_id="again", callback_url="http://127.0.0.1:9/h")
    second = upload(api_client, photo_bytes("coffee.png"), request_id="again", callback_url="http://127.0.0.1:9/h")
    assert first.status_code == 202 and second.status_code == 200
    assert second.json()["id"] == first.json()["id"] and second["Location"] == first["Location"]
    assert Image.objects.count() == 1 and len(storage.storage_list()) == 1


def test_a_used_request_id_with_another_photo_is_a_409(api_client, s3, monkeypatch):
    """A request_id names one submission: a different photo under it is a conflict, and nothing is stored."""
    monkeypatch.setattr("jobs.services.submission.image_job_enqueue", lambda *, image_id: None)
    assert upload(api_client, photo_bytes("coffee.png"), request_id="taken").status_code == 202
    response = upload(api_client, photo_bytes("chelsea_cat.png"), request_id="taken")
    assert_error(response, 409, "request_id", "request_id_conflict")
    assert Image.objects.count() == 1 and len(storage.storage_list()) == 1
