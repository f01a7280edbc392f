"""POST /api/v1/images/ with ``image_url``: accepted at once without fetching, refused with a
400 naming the field, idempotent by URL; and the detect task's fetch (a stub detector: the real
one runs in tests/e2e/test_image_url.py)."""

import hashlib

import pytest

from jobs import services
from jobs.models import Image
from storage import s3 as storage
from tests.api.test_submit import assert_error
from tests.conftest import TESTDATA, photo_bytes, upload

pytestmark = [pytest.mark.django_db]


@pytest.fixture
def not_enqueued(monkeypatch):
    """Jobs are recorded but not published: the test runs the detect service itself."""
    enqueued = []
    monkeypatch.setattr("jobs.services.submission.image_job_enqueue", lambda *, image_id: enqueued.append(image_id))
    return enqueued


def submit_url(client, url: str, *, as_json: bool = True, **fields):
    body = {"image_url": url, "request_id": fields.pop("request_id", "r-1"), **fields}
    return client.post("/api/v1/images/", body, format="json" if as_json else "multipart")


@pytest.mark.parametrize("as_json", [True, False])
def test_a_url_is_accepted_at_once_without_fetching(api_client, s3, photoserver, not_enqueued, as_json, django_capture_on_commit_callbacks):
    """202 in JSON or multipart; nothing is fetched or stored until the worker runs."""
    url = photoserver.url("/photos/obama_1face.jpg")
    with django_capture_on_commit_callbacks(execute=True):
        response = submit_url(api_client, url, as_json=as_json)
    assert response.status_code == 202, response.content
    image = Image.objects.get(id=response.json()["id"])
    assert (image.image_url, image.status, image.original_key, image.original_sha256) == (url, "queued", "", "")
    assert photoserver.requests == []
    assert storage.storage_list() == []
    assert not_enqueued == [image.id]
    detail = api_client.get(f"/api/v1/images/{image.id}/").json()
    assert (detail["image_url"], detail["expires_at"], detail["batch_id"]) == (url, None, None)


def test_an_upload_shows_no_image_url(api_client, s3, not_enqueued):
    """The new fields are null for an upload."""
    response = upload(api_client, photo_bytes("astronaut_1face.png"), request_id="u-1")
    detail = api_client.get(f"/api/v1/images/{response.json()['id']}/").json()
    assert (detail["image_url"], detail["expires_at"], detail["batch_id"]) == (None, None, None)


@pytest.mark.parametrize(
    "url",
    ["http://10.0.0.1/photo.jpg", "http://169.254.169.254/latest/meta-data/", "http://[fd00::1]/a.jpg", "http://192.168.0.10:8080/a.png"],
)
def test_a_private_address_is_refused_at_submission(api_client, s3, url):
    """400 image_url_refused naming image_url, and nothing left behind."""
    assert_error(submit_url(api_client, url), 400, "image_url", "image_url_refused")
    assert Image.objects.count() == 0


def test_loopback_is_refused_unless_its_range_is_opened(api_client, s3, photoserver, settings):
    """IMAGE_URL_ALLOWED_NETWORKS decides (the tests open 127.0.0.0/8; here it is closed)."""
    settings.IMAGE_URL_ALLOWED_NETWORKS = []
    assert_error(submit_url(api_client, photoserver.url("/photos/obama_1face.jpg")), 400, "image_url", "image_url_refused")


@pytest.mark.parametrize(("url", "code"), [("ftp://127.0.0.1/a.jpg", "invalid_scheme"), ("not a url", "invalid")])
def test_other_schemes_and_garbage_are_400(api_client, s3, url, code):
    assert_error(submit_url(api_client, url), 400, "image_url", code)


def test_image_and_image_url_together_are_400(api_client, s3, photoserver):
    """Exactly one of them."""
    response = upload(
        api_client, photo_bytes("astronaut_1face.png"), request_id="b-1", image_url=photoserver.url("/photos/obama_1face.jpg")
    )
    assert_error(response, 400, "image_url")
    assert Image.objects.count() == 0


def test_neither_image_nor_image_url_is_400_naming_image(api_client, s3):
    assert_error(api_client.post("/api/v1/images/", {"request_id": "n-1"}, format="json"), 400, "image")


def test_an_image_in_a_json_body_is_400(api_client, s3):
    """JSON cannot carry a file: image there is refused as no file."""
    assert_error(api_client.post("/api/v1/images/", {"request_id": "j-1", "image": "aGVsbG8="}, format="json"), 400, "image")


@pytest.mark.parametrize("expires_in", [0, -5, 7 * 24 * 3600 + 1, "soon"])
def test_expires_in_out_of_range_is_400(api_client, s3, photoserver, expires_in):
    assert_error(submit_url(api_client, photoserver.url("/photos/obama_1face.jpg"), expires_in=expires_in), 400, "expires_in")


def test_the_same_url_again_is_the_same_job_and_another_is_409(api_client, s3, photoserver, not_enqueued):
    """Idempotent on request_id by the URL (its bytes are not known yet)."""
    url = photoserver.url("/photos/obama_1face.jpg")
    first = submit_url(api_client, url, request_id="same")
    again = submit_url(api_client, url, request_id="same")
    assert (first.status_code, again.status_code) == (202, 200)
    assert first.json()["id"] == again.json()["id"]
    other = submit_url(api_client, photoserver.url("/photos/chelsea_cat.png"), request_id="same")
    assert_error(other, 409, "request_id", "request_id_conflict")
    as_upload = upload(api_client, photo_bytes("obama_1face.jpg"), request_id="same")
    assert_error(as_upload, 409, "request_id", "request_id_conflict")


def test_the_detect_task_fetches_stores_and_records_like_an_upload(api_client, s3, photoserver, not_enqueued, stub_detector):
    """The worker's fetch stores the bytes under the upload's kind of key and records size,
    type, sha256 and dimensions; a re-run detects from the store without fetching again."""
    url = photoserver.url("/redirect/1/photos/obama_1face.jpg")
    image_id = submit_url(api_client, url, as_json=True).json()["id"]
    services.image_job_detect(image_id=image_id)
    image = Image.objects.get(id=image_id)
    data = (TESTDATA / "obama_1face.jpg").read_bytes()
    assert image.status == "completed", (image.error_code, image.error_message)
    assert image.original_key.startswith("originals/") and image.original_key.endswith(f"/{image.id}.jpg")
    assert (image.original_size, image.original_sha256, image.original_content_type) == (
        len(data),
        hashlib.sha256(data).hexdigest(),
        "image/jpeg",
    )
    assert storage.storage_get(key=image.original_key) == data
    assert (image.width, image.height) != (None, None)
    asked = len(photoserver.requests)
    # A re-run (a redelivered message) reads the stored photo.
    Image.objects.filter(id=image.id).update(status="queued")
    services.image_job_detect(image_id=image_id)
    assert Image.objects.get(id=image_id).status == "completed"
    assert len(photoserver.requests) == asked


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/huge", "image_too_large"),
        ("/text", "unsupported_image"),
        ("/status/404", "image_fetch_failed"),
        ("/redirect-to?url=http://10.0.0.1/x.jpg", "image_url_refused"),
    ],
)
def test_a_fetch_failure_fails_the_job_with_its_code(api_client, s3, photoserver, not_enqueued, stub_detector, settings, path, code):
    """The job ends failed with the fetch's error code, and nothing is stored."""
    settings.MAX_UPLOAD_BYTES = 2 * 1024 * 1024
    image_id = submit_url(api_client, photoserver.url(path)).json()["id"]
    services.image_job_detect(image_id=image_id)
    image = Image.objects.get(id=image_id)
    assert (image.status, image.error_code) == ("failed", code)
    assert image.error_message
    assert storage.storage_list() == []
    body = api_client.get(f"/api/v1/images/{image_id}/").json()
    assert body["error"]["code"] == code


@pytest.mark.parametrize("labels", [["face"], "face"])
def test_labels_in_a_json_body_as_a_list_or_a_string(api_client, s3, photoserver, not_enqueued, labels):
    """A JSON body may give labels as a batch item does (a list) or as a form does (a string)."""
    response = submit_url(api_client, photoserver.url("/photos/obama_1face.jpg"), labels=labels)
    assert response.status_code == 202, response.content
    assert Image.objects.get(id=response.json()["id"]).labels == ["face"]


@pytest.mark.parametrize("labels", [["face", 3], ["Face"], [["face"]]])
def test_a_bad_labels_list_is_400_naming_labels(api_client, s3, photoserver, labels):
    assert_error(submit_url(api_client, photoserver.url("/photos/obama_1face.jpg"), labels=labels), 400, "labels")
