"""The whole pipeline on real services: API -> S3 -> RabbitMQ -> worker (MTCNN) -> PostgreSQL ->
annotation -> callback on a real HTTP server."""

import io
import json

import numpy as np
import pytest
from django.conf import settings
from PIL import Image as PILImage

from callbacks.signing import verify_webhook
from jobs.models import Face
from tests.conftest import photo_bytes, upload, wait_terminal

pytestmark = [pytest.mark.django_db(transaction=True)]

LANDMARKS = {"left_eye", "right_eye", "nose", "mouth_left", "mouth_right"}


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def test_every_test_photo_is_detected_annotated_and_called_back(api_client, worker, receiver, s3, manifest):
    """Each photo in tests/data/photos ends completed, with MTCNN's faces, an annotated JPEG and a callback."""
    submitted = {}
    for entry in manifest:
        response = upload(
            api_client,
            photo_bytes(entry["file"]),
            name=entry["file"],
            request_id=f"e2e-{entry['file']}",
            callback_url=receiver.url(f"/hook/{entry['file']}"),
        )
        assert response.status_code == 202, response.content
        body = response.json()
        assert body["status"] == "queued"
        assert response["Location"] == body["status_url"]
        submitted[body["id"]] = entry

    callbacks = {json.loads(c["body"])["id"]: c for c in receiver.wait(len(manifest))}
    assert set(callbacks) == set(submitted)
    for callback in callbacks.values():
        verify_webhook(settings.CALLBACK_SIGNING_SECRET, callback["headers"], callback["body"])

    for image_id, entry in submitted.items():
        image = wait_terminal(image_id)
        payload = json.loads(callbacks[image_id]["body"])
        expected_boxes = entry["mtcnn_boxes_xyxy_default_settings"]

        # The detector finds what facenet-pytorch's MTCNN finds, and every face a person counted.
        assert image.status == "completed", (entry["file"], image.error_code, image.error_message)
        assert payload["face_count"] == len(expected_boxes), entry["file"]
        assert payload["face_count"] >= entry["faces"], entry["file"]
        for face, (x1, y1, x2, y2) in zip(payload["faces"], expected_boxes):
            box = face["box"]
            assert abs(box["x"] - x1) <= 2 and abs(box["y"] - y1) <= 2, entry["file"]
            assert abs(box["x"] + box["width"] - x2) <= 2 and abs(box["y"] + box["height"] - y2) <= 2

        # JSON numbers, never strings.
        assert payload["status"] == "completed"
        assert payload["width"] == entry["width"] and payload["height"] == entry["height"]
        assert isinstance(payload["model_version"], str) and payload["model_version"].startswith("mtcnn@")
        for face in payload["faces"]:
            assert all(isinstance(face["box"][k], int) for k in ("x", "y", "width", "height"))
            assert _is_number(face["confidence"]) and 0 <= face["confidence"] <= 1
            assert set(face["landmarks"]) == LANDMARKS
            assert all(len(p) == 2 and all(_is_number(v) for v in p) for p in face["landmarks"].values())

        # The callback carries the same representation as GET.
        current = api_client.get(f"/api/v1/images/{image_id}/").json()
        assert {k: v for k, v in current.items() if k != "callback"} == {k: v for k, v in payload.items() if k != "callback"}
        assert current["callback"]["status"] == "delivered"
        assert Face.objects.filter(image_id=image_id).count() == payload["face_count"]

        # The annotated JPEG is the photo with the faces drawn on it.
        assert payload["output_image_url"] == f"http://testserver/api/v1/images/{image_id}/annotated/"
        annotated = api_client.get(f"/api/v1/images/{image_id}/annotated/")
        assert annotated.status_code == 200
        out = PILImage.open(io.BytesIO(b"".join(annotated.streaming_content)))
        assert out.format == "JPEG" and out.size == (entry["width"], entry["height"])
        original = np.asarray(PILImage.open(io.BytesIO(photo_bytes(entry["file"]))).convert("RGB"), dtype=np.int16)
        drawn = np.asarray(out.convert("RGB"), dtype=np.int16)
        if payload["faces"]:
            box = payload["faces"][0]["box"]
            edge = drawn[box["y"], box["x"] : box["x"] + box["width"]]
            assert (edge[:, 1] > 200).mean() > 0.9 and (edge[:, 0] < 80).mean() > 0.9  # the green box
            assert np.abs(drawn - original).max() > 100


def test_list_finds_jobs_by_request_id(api_client, worker, s3):
    """GET /api/v1/images/?request_id= returns that id's job; resubmitting it made no second job."""
    first = upload(api_client, photo_bytes("coffee.png"), request_id="shared-id")
    again = upload(api_client, photo_bytes("coffee.png"), request_id="shared-id")
    other = upload(api_client, photo_bytes("coffee.png"), request_id="other-id")
    assert (first.status_code, again.status_code, other.status_code) == (202, 200, 202)
    assert again.json()["id"] == first.json()["id"]

    body = api_client.get("/api/v1/images/", {"request_id": "shared-id"}).json()
    assert body["count"] == 1 and body["results"][0]["id"] == first.json()["id"]
    assert api_client.get("/api/v1/images/").json()["count"] == 2
    for job_id in (first.json()["id"], other.json()["id"]):
        assert wait_terminal(job_id).status == "completed"


def test_each_upload_is_detected_by_the_version_it_asked_for(api_client, worker, s3):
    """Same photo, two versions, one running worker: 1.0.0 keeps MTCNN's 0.82 background false
    positive, 1.1.0 drops it. The worker loads 1.1.0 on first use, without a restart."""
    default = upload(api_client, photo_bytes("obama_1face.jpg"), request_id="obama-default").json()["id"]
    tuned = upload(api_client, photo_bytes("obama_1face.jpg"), request_id="obama-tuned", model_version="mtcnn@1.1.0").json()["id"]
    default_job, tuned_job = wait_terminal(default), wait_terminal(tuned)
    assert (default_job.face_count, tuned_job.face_count) == (2, 1)
    assert default_job.model_version.startswith("mtcnn@1.0.0+weights.")
    assert tuned_job.model_version.startswith("mtcnn@1.1.0+weights.")
    # Reproducible: the one face 1.1.0 keeps is the same face, to the pixel, that 1.0.0 ranks first.
    assert list(tuned_job.faces.values_list("box_x", "box_y", "box_width", "box_height")) == list(
        default_job.faces.values_list("box_x", "box_y", "box_width", "box_height")[:1]
    )
