"""Odd but valid images go through the real pipeline and give the plain original's face count."""

import json

import pytest

from tests.conftest import upload, wait_terminal
from tests.imagevariants import variants

pytestmark = [pytest.mark.django_db(transaction=True)]

PHOTO = "grace_hopper_1face.jpg"  # 512x600, one clear face


def test_odd_encodings_give_the_same_faces_as_the_original(api_client, worker, receiver, s3):
    """Grayscale, RGBA, palette, CMYK, EXIF-rotated, WebP, 16-bit, GIF, BMP, TIFF: one face each,
    in the upright geometry of the original."""
    ids = {}
    for label, (data, filename) in variants(PHOTO).items():
        response = upload(api_client, data, name=filename, request_id=label, callback_url=receiver.url(f"/{label}"))
        assert response.status_code == 202, (label, response.content)
        ids[response.json()["id"]] = label

    payloads = {json.loads(c["body"])["id"]: json.loads(c["body"]) for c in receiver.wait(len(ids))}
    for image_id, label in ids.items():
        image = wait_terminal(image_id)
        payload = payloads[image_id]
        assert image.status == "completed", (label, image.error_code, image.error_message)
        assert payload["face_count"] == 1, label
        # EXIF orientation applied: the reported size and the box are those of the upright photo.
        assert (payload["width"], payload["height"]) == (512, 600), label
        box = payload["faces"][0]["box"]
        assert abs(box["x"] - 174) <= 12 and abs(box["y"] - 120) <= 12, (label, box)
