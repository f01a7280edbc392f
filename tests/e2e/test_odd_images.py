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


def _png(width: int, height: int) -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (width, height), (90, 140, 200)).save(out, format="PNG")
    return out.getvalue()


def test_images_too_small_for_a_face_complete_with_no_faces(api_client, worker, receiver, s3):
    """1x1, 13x13 and thin strips have a side under MTCNN's 20 px smallest face (the 4000x16 strip
    is 2048x8 after the max_side downscale): each job completes with 0 faces instead of failing."""
    sizes = [(1, 1), (13, 13), (4000, 16), (16, 3000)]
    ids = {}
    for width, height in sizes:
        label = f"{width}x{height}"
        response = upload(
            api_client, _png(width, height), name=f"{label}.png", request_id=f"tiny-{label}", callback_url=receiver.url(f"/{label}")
        )
        assert response.status_code == 202, (label, response.content)
        ids[response.json()["id"]] = (label, width, height)

    payloads = {json.loads(c["body"])["id"]: json.loads(c["body"]) for c in receiver.wait(len(ids))}
    for image_id, (label, width, height) in ids.items():
        image = wait_terminal(image_id)
        assert image.status == "completed", (label, image.error_code, image.error_message)
        payload = payloads[image_id]
        assert payload["status"] == "completed" and payload["error"] is None, label
        assert payload["face_count"] == 0 and payload["faces"] == [], label
        assert (payload["width"], payload["height"]) == (width, height), label
