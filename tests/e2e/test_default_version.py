"""A fresh install serves the default version end to end: an empty database bootstrapped by
`manage.py detector_register --bootstrap` with DETECTOR_MODEL empty (env.env's default), as `make
up` and compose do, then photos uploaded without a model_version and detected by a real worker."""

import subprocess
import sys

import pytest

from registry.models import ActiveDetector, DetectorVersion
from tests.conftest import ROOT, photo_bytes, upload, wait_terminal

pytestmark = [pytest.mark.django_db(transaction=True)]

PHOTOS = ("obama_1face.jpg", "astronaut_1face.png", "coffee.png")


def test_a_fresh_database_serves_mtcnn_1_2_0_with_the_references_faces(api_client, worker, worker_env, s3, manifest):
    """mtcnn@1.2.0 is activated and detects: the faces facenet-pytorch's MTCNN returns at 0.9
    or more (mtcnn@1.1.0's), so obama_1face.jpg's 0.82 false positive is gone."""
    ActiveDetector.objects.all().delete()
    DetectorVersion.objects.all().delete()
    done = subprocess.run(
        [sys.executable, "manage.py", "detector_register", "--bootstrap"],
        cwd=ROOT,
        env={**worker_env, "DETECTOR_MODEL": "", "DETECTOR_DEVICE": "cpu"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().splitlines()[-1].startswith("active: mtcnn@1.2.0+weights.")

    entries = {entry["file"]: entry for entry in manifest}
    submitted = {upload(api_client, photo_bytes(name), name=name, request_id=f"default-{name}").json()["id"]: name for name in PHOTOS}
    for image_id, name in submitted.items():
        image = wait_terminal(image_id)
        assert image.status == "completed", (name, image.error_code, image.error_message)
        body = api_client.get(f"/api/v1/images/{image_id}/").json()
        assert body["model_version"].startswith("mtcnn@1.2.0+weights."), name
        entry = entries[name]
        expected = [box for box, prob in zip(entry["mtcnn_boxes_xyxy_default_settings"], entry["mtcnn_probs"]) if prob >= 0.9]
        assert body["face_count"] == len(expected) == entry["faces"], name
        # The manifest's boxes are facenet-pytorch's to 0.1 px; the service's within 2 px of them
        # (tests/e2e/test_pipeline.py), and 1.2.0's within 1 px of 1.1.0's.
        for face, (x1, y1, x2, y2) in zip(body["faces"], expected):
            box = face["box"]
            assert abs(box["x"] - x1) <= 3 and abs(box["y"] - y1) <= 3, name
            assert abs(box["x"] + box["width"] - x2) <= 3 and abs(box["y"] + box["height"] - y2) <= 3, name
            assert face["confidence"] >= 0.9, name
