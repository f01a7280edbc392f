"""Photos by URL end to end: API -> RabbitMQ -> a real worker that fetches from a real HTTP server
on loopback (tests/photoserver.py), stores, detects with MTCNN and calls back."""

import hashlib
import json

import pytest
from django.conf import settings

from callbacks.signing import verify_webhook
from jobs.models import Image
from storage import s3 as storage
from tests.conftest import TESTDATA, WorkerProcess, photo_bytes, upload, wait_terminal
from tests.photoserver import PhotoServer

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def worker(worker_env, tmp_path_factory):
    """This module's worker may fetch from 127.0.0.1 only (the API here allows 127.0.0.0/8), so
    that a second server on 127.0.0.2 stands for an address the worker must refuse."""
    env = {**worker_env, "IMAGE_URL_ALLOWED_NETWORKS": "127.0.0.1/32"}
    process = WorkerProcess(tmp_path_factory.mktemp("worker") / "worker.log", env).start()
    yield process
    process.stop()


@pytest.fixture
def refused_server():
    """A photo server on 127.0.0.2: outside what this module's worker may fetch."""
    server = PhotoServer(host="127.0.0.2").start()
    yield server
    server.stop()


def submit_url(client, url: str, request_id: str, **fields):
    return client.post("/api/v1/images/", {"image_url": url, "request_id": request_id, **fields}, format="json")


def faces_of(image: Image) -> list[tuple]:
    return list(image.faces.order_by("index").values_list("box_x", "box_y", "box_width", "box_height", "confidence", "label"))


def test_a_photo_by_url_gets_the_same_faces_as_its_upload(api_client, worker, receiver, s3, photoserver):
    """Fetched, stored and detected: the same bytes, faces and callback shape as an upload."""
    name = "grace_hopper_1face.jpg"
    url = photoserver.url(f"/redirect/1/photos/{name}")
    by_url = submit_url(api_client, url, "url-grace", callback_url=receiver.url("/hook/url"))
    assert by_url.status_code == 202, by_url.content
    uploaded = upload(api_client, photo_bytes(name), name=name, request_id="upload-grace")
    assert uploaded.status_code == 202, uploaded.content

    fetched, direct = wait_terminal(by_url.json()["id"]), wait_terminal(uploaded.json()["id"])
    assert (fetched.status, direct.status) == ("completed", "completed"), (fetched.error_code, fetched.error_message)
    assert fetched.original_sha256 == direct.original_sha256 == hashlib.sha256((TESTDATA / name).read_bytes()).hexdigest()
    assert storage.storage_get(key=fetched.original_key) == photo_bytes(name)
    assert (fetched.width, fetched.height) == (direct.width, direct.height)
    assert faces_of(fetched) == faces_of(direct) and fetched.face_count >= 1

    (callback,) = receiver.wait(1)
    verify_webhook(settings.CALLBACK_SIGNING_SECRET, callback["headers"], callback["body"])
    payload = json.loads(callback["body"])
    assert (payload["status"], payload["image_url"], payload["face_count"]) == ("completed", url, fetched.face_count)
    assert payload["output_image_url"]
    # Fetched once (the redirect, then the photo); annotation read the stored copy.
    assert photoserver.count(f"/photos/{name}") == 1


@pytest.mark.parametrize("address", ["10.0.0.1", "169.254.169.254"])
def test_a_private_address_is_refused_at_submission(api_client, s3, address):
    """400 naming image_url; no job."""
    response = submit_url(api_client, f"http://{address}/latest/meta-data/", "private")
    assert response.status_code == 400
    assert (response.json()["error"]["field"], response.json()["error"]["code"]) == ("image_url", "image_url_refused")
    assert not Image.objects.filter(request_id="private").exists()


def test_a_redirect_to_a_refused_address_fails_and_is_never_followed(api_client, worker, receiver, s3, photoserver, refused_server):
    """image_url_refused, a callback saying so, and not one request reached the refused server."""
    target = refused_server.url("/photos/obama_1face.jpg")
    response = submit_url(api_client, photoserver.url(f"/redirect-to?url={target}"), "redirect-refused", callback_url=receiver.url())
    image = wait_terminal(response.json()["id"])
    assert (image.status, image.error_code) == ("failed", "image_url_refused")
    assert photoserver.count("/redirect-to") == 1
    assert refused_server.requests == []
    assert image.original_key == "" and not image.faces.exists()
    (callback,) = receiver.wait(1)
    assert json.loads(callback["body"])["error"]["code"] == "image_url_refused"


def test_an_oversized_body_fails_image_too_large(api_client, worker, s3, photoserver):
    """An endless body is cut at MAX_UPLOAD_BYTES: image_too_large, nothing stored."""
    image = wait_terminal(submit_url(api_client, photoserver.url("/huge"), "huge").json()["id"])
    assert (image.status, image.error_code) == ("failed", "image_too_large")
    assert image.original_key == ""


def test_a_server_error_is_retried_and_the_job_completes(api_client, worker, s3, photoserver):
    """500 then 200: the fetch tries again and the job completes."""
    image = wait_terminal(submit_url(api_client, photoserver.url("/flaky/e2e/photos/astronaut_1face.png"), "flaky").json()["id"])
    assert image.status == "completed", (image.error_code, image.error_message)
    assert photoserver.count("/flaky/e2e/") == 2
