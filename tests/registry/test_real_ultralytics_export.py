"""The yolo-onnx family on a real Ultralytics export that a package ships: NudeNet 3.4.2's
``320n.onnx`` (a YOLOv8n exported by Ultralytics 8.2.46, dynamic input height and width, 18
classes, ``imgsz`` [320, 320] in its metadata), installed --no-deps from requirements-nodeps.txt.

It is registered through the API with an operator key, run as a job on the test photos, and held
to two references: MTCNN's boxes of the photos manifest (the faces are found where MTCNN finds
them) and the same ONNX file run by onnx's own reference runtime with a letterbox, decoding and
NMS written out plainly here (the boxes agree within 1 px). AGPL-3.0 (its metadata): a test
fixture only, never shipped as a version (docs/models.md).
"""

import importlib.util
import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from detection import engines
from detection.compare import iou
from jobs import services as job_services
from jobs.models import Image
from registry.models import DetectorVersion
from storage import s3 as storage
from tests.conftest import TESTDATA, photo_bytes, upload

pytestmark = [pytest.mark.django_db]

MANIFEST = {
    "name": "nudenet",
    "version": "3.4.2",
    "implementation": "yolo-onnx",
    "settings": {},
    "notes": "NudeNet 3.4.2 320n.onnx: a test fixture (AGPL-3.0), not a shipped version",
}
FACE_PHOTOS = ["astronaut_1face.png", "grace_hopper_1face.jpg", "obama_1face.jpg", "cameraman_profile_1face.png"]
EMPTY_PHOTOS = ["coffee.png", "gravel_texture.png", "chelsea_cat.png"]
FACE_LABELS = {"face_female", "face_male"}


def model_path() -> Path:
    """The file in the installed wheel (found without importing nudenet, whose module imports
    onnxruntime, which is not installed: only the file is used)."""
    spec = importlib.util.find_spec("nudenet")
    assert spec is not None, "nudenet==3.4.2 (requirements-nodeps.txt) is not installed"
    return Path(list(spec.submodule_search_locations)[0]) / "320n.onnx"


@pytest.fixture(autouse=True)
def _cache(tmp_path, settings):
    settings.MODEL_CACHE_DIR = tmp_path / "model-cache"
    engines.clear_cache()
    yield
    engines.clear_cache()


@pytest.fixture
def operator(db):
    from rest_framework.test import APIClient

    from clients.services import api_key_create

    client = APIClient()
    client.credentials(HTTP_X_API_KEY=api_key_create(client_name="ops-nudenet", operator=True)[1])
    return client


@pytest.fixture
def registered(operator, s3) -> dict:
    artifact = io.BytesIO(model_path().read_bytes())
    artifact.name = "320n.onnx"
    response = operator.post("/api/v1/models/", {"artifact": artifact, "manifest": json.dumps(MANIFEST)}, format="multipart")
    assert response.status_code == 201, response.json()
    return response.json()


# --- the reference: the ONNX file run plainly -------------------------------------------------


class Reference:
    """The model run by onnx.reference (onnx's own Python runtime: no OpenVINO, nothing of
    detection/yolo_onnx.py), with Ultralytics' fixed-size letterbox, v8 decoding and per-class
    greedy NMS written out step by step."""

    def __init__(self, path: Path, names: list[str], size: int = 320, conf: float = 0.25, iou_max: float = 0.45) -> None:
        from onnx.reference import ReferenceEvaluator

        self.session = ReferenceEvaluator(str(path))
        self.names = names
        self.size, self.conf, self.iou_max = size, conf, iou_max

    def __call__(self, rgb: np.ndarray) -> list[tuple[str, float, list[float]]]:
        import cv2

        h, w = rgb.shape[:2]
        r = min(self.size / h, self.size / w)
        new_w, new_h = int(round(w * r)), int(round(h * r))
        canvas = np.full((self.size, self.size, 3), 114, dtype=np.uint8)
        left = int(round((self.size - new_w) / 2 - 0.1))
        top = int(round((self.size - new_h) / 2 - 0.1))
        canvas[top : top + new_h, left : left + new_w] = cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        tensor = (canvas.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # its Sigmoid overflows to 0 or 1, as it should
            (out,) = self.session.run(None, {"images": tensor})
        rows = out[0].T  # (candidates, 4 + classes)
        found = []
        for row in rows:
            cls = int(np.argmax(row[4:]))
            score = float(row[4 + cls])
            if score > self.conf:
                cx, cy, bw, bh = (float(v) for v in row[:4])
                found.append((cls, score, [cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2]))
        found.sort(key=lambda f: -f[1])
        kept = []
        for cls, score, box in found:
            if all(k[0] != cls or iou(_xywh(k[2]), _xywh(box)) <= self.iou_max for k in kept):
                kept.append((cls, score, box))
        result = []
        for cls, score, (x1, y1, x2, y2) in kept:
            box = [(x1 - left) / r, (y1 - top) / r, (x2 - left) / r, (y2 - top) / r]
            box = [min(max(box[0], 0), w), min(max(box[1], 0), h), min(max(box[2], 0), w), min(max(box[3], 0), h)]
            result.append((self.names[cls], score, box))
        return result


def _xywh(box: list[float]) -> tuple[float, float, float, float]:
    return (box[0], box[1], box[2] - box[0], box[3] - box[1])


@pytest.fixture(scope="module")
def reference() -> Reference:
    import ast

    import onnx

    metadata = {p.key: p.value for p in onnx.load(str(model_path()), load_external_data=False).metadata_props}
    # The labels read independently of detection.yolo_onnx's parser and mapping: these names
    # are upper-case words joined by "_", so lower case is the label.
    names = ast.literal_eval(metadata["names"])
    return Reference(model_path(), [names[i].lower() for i in range(len(names))])


@pytest.fixture(scope="module")
def mtcnn_boxes() -> dict[str, list[list[float]]]:
    entries = json.loads((TESTDATA / "manifest.json").read_text())
    return {e["file"]: e["mtcnn_boxes_xyxy_default_settings"] for e in entries}


# --- the tests --------------------------------------------------------------------------------


def test_the_real_export_is_accepted_with_its_metadata(registered):
    """Dynamic input run at its imgsz (320 x 320), 18 classes from its names, labels mapped."""
    body = registered
    assert body["id"] == "nudenet@3.4.2" and body["settings"]["layout"] == "v8"
    assert body["artifact"]["input_size"] == [320, 320] and body["settings"]["input_size"] == [320, 320]
    assert body["artifact"]["sha256"] == body["weights"][0]["sha256"] and body["artifact"]["size"] == model_path().stat().st_size
    assert len(body["labels"]) == 18 and FACE_LABELS <= set(body["labels"])
    assert body["artifact"]["label_map"]["FACE_FEMALE"] == "face_female"
    assert body["artifact"]["label_map"]["FACE_MALE"] == "face_male"
    assert storage.storage_list(prefix="models/") == [f"models/sha256/{body['artifact']['sha256']}"]


def test_a_manifest_input_size_overrides_the_exported_one(operator, s3):
    """A dynamic export may be served at another size the manifest names ([width, height])."""
    artifact = io.BytesIO(model_path().read_bytes())
    artifact.name = "320n.onnx"
    manifest = {**MANIFEST, "version": "3.4.2-640", "settings": {"input_size": [640, 480]}}
    response = operator.post("/api/v1/models/", {"artifact": artifact, "manifest": json.dumps(manifest)}, format="multipart")
    assert response.status_code == 201, response.json()
    assert response.json()["artifact"]["input_size"] == [640, 480]


@pytest.fixture
def detect(api_client, registered, monkeypatch):
    """Run one photo as a job on the uploaded version, in this process (fetched from the bucket
    into an empty cache, loaded, detected): its stored detections as (label, confidence, xyxy)."""
    monkeypatch.setattr("jobs.services.image_job_enqueue", lambda *, image_id: None)

    def run(name: str) -> list[tuple[str, float, list[int]]]:
        response = upload(api_client, photo_bytes(name), name=name, request_id=f"nudenet-{name}", model_version=registered["id"])
        assert response.status_code == 202, response.json()
        job = Image.objects.get(id=response.json()["id"])
        job_services.image_job_detect(image_id=job.id)
        job.refresh_from_db()
        assert job.status == "completed", (job.error_code, job.error_message)
        assert job.model_version == DetectorVersion.objects.get(id=registered["id"]).label
        return [
            (f.label, f.confidence, [f.box_x, f.box_y, f.box_x + f.box_width, f.box_y + f.box_height]) for f in job.faces.order_by("index")
        ]

    return run


@pytest.mark.parametrize("name", FACE_PHOTOS)
def test_faces_are_found_where_mtcnn_finds_them(detect, mtcnn_boxes, name):
    """Each one-face photo: its face labelled face_female or face_male, overlapping MTCNN's box (IoU >= 0.5)."""
    faces = [d for d in detect(name) if d[0] in FACE_LABELS]
    assert len(faces) == 1, faces
    reference_box = mtcnn_boxes[name][0]  # the real face (obama's second MTCNN box is its background false positive)
    assert iou(_xywh(faces[0][2]), _xywh(reference_box)) >= 0.5, (faces, reference_box)


@pytest.mark.parametrize("name", FACE_PHOTOS + EMPTY_PHOTOS)
def test_detections_equal_the_onnx_file_run_plainly(detect, reference, name):
    """The job's detections are the reference runtime's: same labels, confidences, boxes within 1 px."""
    from jobs.imaging import image_decode_rgb

    got = detect(name)
    expected = reference(np.asarray(image_decode_rgb(photo_bytes(name)), dtype=np.uint8))
    assert [g[0] for g in got] == [e[0] for e in expected]
    for g, e in zip(got, expected):
        assert g[1] == pytest.approx(e[1], abs=1e-3)
        assert max(abs(a - b) for a, b in zip(g[2], e[2])) <= 1.0, (g, e)
    if name in EMPTY_PHOTOS:
        assert got == []  # nothing on the photos without a person
