"""An uploaded model end to end, on real services and a real worker: uploaded through the API with
an operator's key, fetched by a worker whose cache starts empty, its detections equal to running
the same ONNX file directly, and a shadow rollout between two uploaded versions."""

import hashlib
import io
import json

import numpy as np
import pytest
from onnx.reference import ReferenceEvaluator
from PIL import Image as PILImage

from detection.yolo_onnx import decode, letterbox, scale_boxes, to_tensor
from jobs.models import Face, ShadowRun
from jobs.services import faces_from_detections
from registry.services import detector_version_activate
from rollouts.services import rollout_end, rollout_start
from tests import yolo_models
from tests.conftest import WorkerProcess, photo_bytes, upload, wait_terminal
from tests.e2e.test_faults import wait_for

pytestmark = [pytest.mark.django_db(transaction=True)]

PHOTOS = ("astronaut_1face.png", "coffee.png", "obama_1face.jpg")


@pytest.fixture
def operator(db):
    from rest_framework.test import APIClient

    from clients.services import api_key_create

    client = APIClient()
    client.credentials(HTTP_X_API_KEY=api_key_create(client_name="ops-e2e-artifacts", operator=True)[1])
    return client


@pytest.fixture
def cache_dir(tmp_path):
    return tmp_path / "model-cache"


@pytest.fixture
def model_worker(worker_env, tmp_path, cache_dir):
    """A worker whose model cache starts empty (another host: nothing shared but the bucket)."""
    assert not cache_dir.exists()
    process = WorkerProcess(tmp_path / "worker.log", {**worker_env, "MODEL_CACHE_DIR": str(cache_dir)}).start()
    yield process
    process.stop()


def post_model(client, data: bytes, manifest: dict) -> dict:
    artifact = io.BytesIO(data)
    artifact.name = "best.onnx"
    response = client.post("/api/v1/models/", {"artifact": artifact, "manifest": json.dumps(manifest)}, format="multipart")
    assert response.status_code == 201, response.json()
    return response.json()


def direct(data: bytes, photo: bytes, settings: dict) -> list[tuple]:
    """The same ONNX file run directly (onnx's reference evaluator, no OpenVINO, no service), with
    Ultralytics' pre- and postprocessing, rounded as the service stores faces."""
    rgb = PILImage.open(io.BytesIO(photo)).convert("RGB")
    array = np.asarray(rgb)
    padded, _, _ = letterbox(array, (64, 64))
    (output,) = ReferenceEvaluator(data).run(None, {"images": to_tensor(padded)})
    rows = decode(output, layout="v8", min_confidence=settings["min_confidence"], iou=settings["iou"], max_det=300)
    boxes = scale_boxes(rows[:, :4], input_size=(64, 64), image_size=rgb.size)
    names = ["person", "traffic_light", "dog"]
    from detection.base import Detection

    detections = [
        Detection(x1=b[0], y1=b[1], x2=b[2], y2=b[3], confidence=float(r[4]), label=names[int(r[5])]) for b, r in zip(boxes, rows)
    ]
    return [
        (f.label, f.x, f.y, f.width, f.height, f.confidence) for f in faces_from_detections(detections, width=rgb.width, height=rgb.height)
    ]


def test_an_uploaded_model_serves_jobs_and_shadows_another(operator, api_client, model_worker, cache_dir, s3):
    """Upload, detect (equal to the file run directly, boxes within 1 px), fetched into an empty
    cache; then a shadow rollout between two uploaded versions agrees on every photo."""
    settings = {"min_confidence": 0.25, "iou": 0.45}
    v8 = yolo_models.tiny_v8()
    first = post_model(operator, v8, {"name": "tiny", "version": "1.0.0", "implementation": "yolo-onnx", "settings": settings})
    # The same detections exported in YOLOv5's layout: another file, another version.
    second = post_model(
        operator, yolo_models.tiny_v5(), {"name": "tiny", "version": "2.0.0", "implementation": "yolo-onnx", "settings": settings}
    )

    for name in PHOTOS:
        response = upload(api_client, photo_bytes(name), name=name, request_id=f"uploaded-{name}", model_version="tiny@1.0.0")
        assert response.status_code == 202, response.json()
        job = wait_terminal(response.json()["id"])
        assert job.status == "completed", (name, job.error_code)
        assert job.model_version == first["label"]
        got = [
            (f.label, f.box_x, f.box_y, f.box_width, f.box_height, f.confidence) for f in Face.objects.filter(image=job).order_by("index")
        ]
        expected = direct(v8, photo_bytes(name), settings)
        assert [g[0] for g in got] == [e[0] for e in expected], name
        for g, e in zip(got, expected):
            assert max(abs(a - b) for a, b in zip(g[1:5], e[1:5])) <= 1, (name, g, e)
            assert g[5] == pytest.approx(e[5], abs=1e-3)
    # The worker fetched the file from the bucket into its own (empty) cache, by digest.
    assert (cache_dir / f"{hashlib.sha256(v8).hexdigest()}.onnx").is_file()

    detector_version_activate(version_id="tiny@1.0.0")
    rollout = rollout_start(candidate="tiny@2.0.0", mode="shadow", actor="test")
    ids = []
    for name in PHOTOS:
        response = upload(api_client, photo_bytes(name), name=name, request_id=f"uploaded-shadow-{name}")
        assert response.status_code == 202, response.json()
        ids.append(response.json()["id"])
    for image_id in ids:
        job = wait_terminal(image_id)
        assert job.status == "completed" and job.model_version == first["label"]

    def finished():
        runs = list(ShadowRun.objects.filter(job_id__in=ids))
        return runs if len(runs) == len(ids) and all(run.status != "queued" for run in runs) else None

    runs = wait_for(finished, 180, "the shadow runs", interval=0.2)
    for run in runs:
        assert (run.status, run.detector_version_id, run.rollout_id) == ("completed", "tiny@2.0.0", rollout.id)
        assert run.agreement == 1.0 and len(run.faces) == 3 and run.face_count == 0  # face_count counts "face" labels only
        assert sorted(face["label"] for face in run.faces) == ["dog", "person", "traffic_light"]
    assert (cache_dir / f"{second['artifact']['sha256']}.onnx").is_file()
    rollout_end(rollout_id=rollout.id, actor="test")
