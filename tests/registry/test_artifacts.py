"""Uploaded models: registered through the API (operators only) and the command, checked before
they are accepted (every refusal leaves nothing in the bucket or the database), fetched by a
worker into its cache by sha256, reported by /readyz, and a broken one failing only its job."""

import hashlib
import io
import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from onnx import TensorProto, helper, numpy_helper

from detection import engines
from jobs import services as job_services
from jobs.models import Image
from registry import artifacts
from registry.models import DetectorVersion
from storage import s3 as storage
from tests import yolo_models
from tests.conftest import photo_bytes, upload

pytestmark = [pytest.mark.django_db]

MANIFEST = {
    "name": "tiny",
    "version": "1.0.0",
    "implementation": "yolo-onnx",
    "settings": {"min_confidence": 0.25, "iou": 0.45},
    "notes": "a tiny test model",
    "dataset": {"tag": "tiny-2026", "sha256": "ab" * 32},
    "build": "b1",
    "image": "img:1",
}


@pytest.fixture
def operator(db):
    from rest_framework.test import APIClient

    from clients.services import api_key_create

    client = APIClient()
    client.credentials(HTTP_X_API_KEY=api_key_create(client_name="ops-artifacts", operator=True)[1])
    return client


@pytest.fixture(autouse=True)
def _cache(tmp_path, settings):
    settings.MODEL_CACHE_DIR = tmp_path / "model-cache"
    engines.clear_cache()
    yield
    engines.clear_cache()


def post_model(client, data: bytes, manifest: dict | str = MANIFEST):
    artifact = io.BytesIO(data)
    artifact.name = "best.onnx"
    body = manifest if isinstance(manifest, str) else json.dumps(manifest)
    return client.post("/api/v1/models/", {"artifact": artifact, "manifest": body}, format="multipart")


def nothing_stored(version_id: str = "tiny@1.0.0") -> bool:
    return storage.storage_list(prefix="models/") == [] and not DetectorVersion.objects.filter(id=version_id).exists()


def test_an_operator_uploads_a_model(operator, s3):
    """201: the version with its artifact's facts, labels mapped, the bytes in the bucket by sha256."""
    data = yolo_models.tiny_v8()
    digest = hashlib.sha256(data).hexdigest()
    response = post_model(operator, data)
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["id"] == "tiny@1.0.0" and body["implementation"] == "yolo-onnx"
    assert body["labels"] == ["person", "traffic_light", "dog"]
    assert body["artifact"] == {
        "sha256": digest,
        "size": len(data),
        "format": "onnx",
        "input_size": [64, 64],
        "label_map": {"traffic light": "traffic_light"},
    }
    assert body["weights"] == [{"file": "model.onnx", "sha256": digest}]
    assert body["label"] == DetectorVersion.objects.get(id="tiny@1.0.0").label and body["label"].startswith("tiny@1.0.0+weights.")
    assert body["settings"]["layout"] == "v8" and body["settings"]["precision"] == "f32"
    assert body["dataset"] == MANIFEST["dataset"] and body["build"] == "b1" and body["notes"] == "a tiny test model"
    assert storage.storage_list(prefix="models/") == [f"models/sha256/{digest}"]
    assert storage.storage_get(key=f"models/sha256/{digest}") == data


def test_the_same_upload_again_answers_200_and_other_bytes_409(operator, s3):
    """Idempotent for the same bytes; a version is immutable."""
    assert post_model(operator, yolo_models.tiny_v8()).status_code == 201
    again = post_model(operator, yolo_models.tiny_v8())
    assert again.status_code == 200 and again.json()["id"] == "tiny@1.0.0"
    other = post_model(operator, yolo_models.tiny_v5())
    assert other.status_code == 409 and other.json()["error"]["code"] == "version_exists"
    assert len(storage.storage_list(prefix="models/")) == 1


def test_a_client_key_may_not_upload(api_client, s3):
    """403 for a client's key; it still reads the versions."""
    response = post_model(api_client, yolo_models.tiny_v8())
    assert response.status_code == 403 and response.json()["error"]["code"] == "forbidden"
    assert nothing_stored()
    assert api_client.get("/api/v1/models/").status_code == 200


def test_a_file_past_the_size_limit_is_413(operator, s3, settings):
    """MODEL_ARTIFACT_MAX_BYTES: refused with 413, nothing kept."""
    settings.MODEL_ARTIFACT_MAX_BYTES = 100
    response = post_model(operator, yolo_models.tiny_v8())
    assert response.status_code == 413 and response.json()["error"]["field"] == "artifact"
    assert nothing_stored()


def _external_data_model() -> bytes:
    model = helper.make_model(
        helper.make_graph(
            [helper.make_node("Add", ["table", "bias"], ["output0"])],
            "g",
            [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])],
            [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 7, 5])],
            [numpy_helper.from_array(yolo_models.candidates_v8(yolo_models.V8_ROWS), "table")],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    bias = model.graph.initializer.add()
    bias.name, bias.data_type, bias.dims[:] = "bias", TensorProto.FLOAT, [1, 7, 5]
    bias.data_location = TensorProto.EXTERNAL
    entry = bias.external_data.add()
    entry.key, entry.value = "location", "../../etc/passwd"
    return model.SerializeToString()


def _two_inputs_model() -> bytes:
    table = yolo_models.candidates_v8(yolo_models.V8_ROWS)
    model = helper.make_model(
        helper.make_graph(
            [helper.make_node("Add", ["table", "extra"], ["output0"])],
            "g",
            [
                helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64]),
                helper.make_tensor_value_info("extra", TensorProto.FLOAT, list(table.shape)),
            ],
            [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(table.shape))],
            [numpy_helper.from_array(table, "table")],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    return model.SerializeToString()


REFUSALS = {
    "not_onnx": (lambda: b"\x89PNG\r\n\x1a\n" + b"\x00" * 500, MANIFEST, "artifact_not_onnx"),
    "truncated": (lambda: yolo_models.tiny_v8()[: len(yolo_models.tiny_v8()) // 2], MANIFEST, "artifact_not_onnx"),
    "external_data": (_external_data_model, MANIFEST, "artifact_external_data"),
    "custom_operator": (lambda: yolo_models.tiny_v8(op_domain="com.example.custom"), MANIFEST, "artifact_custom_operators"),
    "two_inputs": (_two_inputs_model, MANIFEST, "artifact_input"),
    "output_not_detections": (
        lambda: yolo_models.build(yolo_models.candidates_v8(yolo_models.V8_ROWS)[0], names=yolo_models.V8_NAMES),
        MANIFEST,
        "artifact_output",
    ),
    "labels_do_not_match": (yolo_models.tiny_v8, {**MANIFEST, "labels": ["a", "b"]}, "artifact_labels"),
    "no_labels_anywhere": (lambda: yolo_models.build(yolo_models.candidates_v8(yolo_models.V8_ROWS)), MANIFEST, "artifact_labels"),
    "absurd_input_size": (lambda: yolo_models.tiny_v8(size=(100_000, 100_000)), MANIFEST, "artifact_sizes"),
    "manifest_not_json": (yolo_models.tiny_v8, "{not json", "invalid_manifest"),
    "manifest_wrong_implementation": (yolo_models.tiny_v8, {**MANIFEST, "implementation": "mtcnn"}, "invalid_manifest"),
    "manifest_build_too_long": (yolo_models.tiny_v8, {**MANIFEST, "build": "b" * 65}, "invalid_manifest"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refused_uploads_leave_nothing_behind(operator, s3, case):
    """A 400 naming the problem; no object, no version."""
    make, manifest, code = REFUSALS[case]
    response = post_model(operator, make(), manifest)
    assert response.status_code == 400, response.json()
    error = response.json()["error"]
    assert error["code"] == code and error["field"] in ("artifact", "manifest") and error["message"]
    assert nothing_stored()


def test_storage_down_is_503_and_leaves_no_version(operator, s3, settings):
    """The bucket unreachable while storing: 503, no version registered."""
    settings.S3_ENDPOINT = "127.0.0.1:9"
    storage.reset_clients()
    try:
        response = post_model(operator, yolo_models.tiny_v8())
    finally:
        settings.S3_ENDPOINT = s3.endpoint
        storage.reset_clients()
    assert response.status_code == 503 and response.json()["error"]["code"] == "storage_unavailable"
    assert nothing_stored()


def test_an_input_that_is_not_one_image_is_refused(operator, s3):
    """A grey-scale [1, 1, H, W] input is not a colour image."""
    import onnx

    model = onnx.load_from_string(yolo_models.tiny_v8())
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 1
    response = post_model(operator, model.SerializeToString())
    assert response.status_code == 400 and response.json()["error"]["code"] == "artifact_input"
    assert nothing_stored()


def test_a_model_that_does_not_run_is_refused(operator, s3):
    """A graph the checker accepts but that fails on a blank image (a bad reshape) is refused."""
    table = yolo_models.candidates_v8(yolo_models.V8_ROWS)
    model = helper.make_model(
        helper.make_graph(
            [
                helper.make_node("Reshape", ["images", "shape"], ["r"]),
                helper.make_node("ReduceMean", ["r"], ["m"], keepdims=0),
                helper.make_node("Add", ["table", "m"], ["output0"]),
            ],
            "g",
            [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])],
            [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(table.shape))],
            [numpy_helper.from_array(table, "table"), numpy_helper.from_array(__import__("numpy").array([7, 7], dtype="int64"), "shape")],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    entry = model.metadata_props.add()
    entry.key, entry.value = "names", repr(yolo_models.V8_NAMES)
    response = post_model(operator, model.SerializeToString())
    assert response.status_code == 400 and response.json()["error"]["code"] == "artifact_does_not_run"
    assert nothing_stored()


def test_the_check_is_bounded_in_memory(operator, s3, settings):
    """A check that needs more than MODEL_CHECK_MEMORY_BYTES is stopped and refused."""
    settings.MODEL_CHECK_MEMORY_BYTES = 64 * 1024 * 1024  # not even room for the interpreter's imports
    response = post_model(operator, yolo_models.tiny_v8())
    assert response.status_code == 400 and response.json()["error"]["code"] in ("artifact_check_memory", "artifact_does_not_run")
    assert nothing_stored()


def test_a_dynamic_export_runs_at_its_exported_size(operator, s3):
    """A dynamic input height and width: the model's imgsz metadata ([height, width]) is the size recorded."""
    response = post_model(operator, yolo_models.tiny_v8(dynamic=True, metadata={"imgsz": "[48, 80]"}))
    assert response.status_code == 201, response.json()
    assert response.json()["artifact"]["input_size"] == [80, 48] and response.json()["settings"]["input_size"] == [80, 48]


@pytest.mark.parametrize(
    "metadata, manifest_settings, code",
    [
        ({}, {}, "artifact_input"),  # no imgsz and no settings.input_size: no size to run at
        ({"imgsz": "__import__('os').getcwd()"}, {}, "artifact_metadata"),  # not a literal: never evaluated
        ({"imgsz": "[8, 8]"}, {}, "artifact_metadata"),  # too small to be a detector's input
        ({"imgsz": "[64, 64]"}, {"input_size": [64, 99999]}, "artifact_input"),
    ],
)
def test_a_dynamic_export_without_a_usable_size_is_refused(operator, s3, metadata, manifest_settings, code):
    """400 naming the problem; nothing stored."""
    data = yolo_models.build(yolo_models.candidates_v8(yolo_models.V8_ROWS), dynamic=True, metadata=metadata)
    manifest = {**MANIFEST, "labels": list(yolo_models.V8_NAMES.values()), "settings": manifest_settings}
    response = post_model(operator, data, manifest)
    assert response.status_code == 400 and response.json()["error"]["code"] == code, response.json()
    assert nothing_stored()


def test_a_v5_export_with_labels_from_the_manifest(operator, s3):
    """Without names metadata the manifest's labels name the classes (mapped to the pattern)."""
    data = yolo_models.build(yolo_models.candidates_v5(yolo_models.V5_ROWS))
    response = post_model(operator, data, {**MANIFEST, "labels": ["Person", "traffic light", "dog"]})
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["labels"] == ["person", "traffic_light", "dog"] and body["settings"]["layout"] == "v5"
    assert body["artifact"]["label_map"] == {"Person": "person", "traffic light": "traffic_light"}


def test_the_command_registers_the_same_way(s3, tmp_path):
    """detector_register MANIFEST --artifact FILE: checked, stored, registered; a refusal is an error."""
    manifest = tmp_path / "tiny.json"
    manifest.write_text(json.dumps(MANIFEST))
    model = yolo_models.write(tmp_path / "best.onnx", yolo_models.tiny_v8())
    out = io.StringIO()
    call_command("detector_register", str(manifest), "--artifact", str(model), stdout=out)
    assert "registered tiny@1.0.0+weights." in out.getvalue()
    assert DetectorVersion.objects.get(id="tiny@1.0.0").artifact_size == model.stat().st_size
    broken = yolo_models.write(tmp_path / "broken.onnx", b"garbage" * 100)
    manifest.write_text(json.dumps({**MANIFEST, "version": "1.0.1"}))
    with pytest.raises(CommandError, match="artifact_not_onnx"):
        call_command("detector_register", str(manifest), "--artifact", str(broken))
    assert not DetectorVersion.objects.filter(id="tiny@1.0.1").exists()


# --- a worker's cache -----------------------------------------------------------------------------


def _registered(operator, data=None, manifest=MANIFEST) -> DetectorVersion:
    response = post_model(operator, data or yolo_models.tiny_v8(), manifest)
    assert response.status_code == 201, response.json()
    return DetectorVersion.objects.get(id=response.json()["id"])


def test_the_cache_fetches_once_and_checks_the_digest(operator, s3, settings):
    """First use downloads into MODEL_CACHE_DIR/<sha256>.onnx; a corrupted copy is fetched again."""
    version = _registered(operator)
    path = artifacts.artifact_local_path(version.artifact_sha256)
    assert path.parent == settings.MODEL_CACHE_DIR and path.name == f"{version.artifact_sha256}.onnx"
    assert path.read_bytes() == storage.storage_get(key=version.artifact_key)
    path.write_bytes(b"corrupted")
    assert artifacts.artifact_local_path(version.artifact_sha256).read_bytes() == storage.storage_get(key=version.artifact_key)
    assert [p.name for p in settings.MODEL_CACHE_DIR.iterdir()] == [path.name]  # no temporary files left


def test_the_cache_evicts_the_least_recently_used(operator, s3, settings):
    """Past MODEL_CACHE_MAX_BYTES the file used longest ago goes first."""
    import os

    first = _registered(operator)
    second = _registered(operator, yolo_models.tiny_v5(), {**MANIFEST, "version": "2.0.0"})
    settings.MODEL_CACHE_MAX_BYTES = first.artifact_size + second.artifact_size - 1
    a = artifacts.artifact_local_path(first.artifact_sha256)
    os.utime(a, (1, 1))  # used long ago
    b = artifacts.artifact_local_path(second.artifact_sha256)
    assert b.exists() and not a.exists()


def test_other_bytes_under_the_name_are_a_weights_mismatch(operator, s3):
    """The bucket holding other bytes under a digest (or none) refuses to load: model_weights_mismatch."""
    from detection.weights import WeightsMismatch

    version = _registered(operator)
    storage.storage_put(key=version.artifact_key, data=b"tampered", length=8, content_type="application/octet-stream")
    with pytest.raises(WeightsMismatch, match="sha256"):
        artifacts.artifact_local_path(version.artifact_sha256)
    storage.storage_delete(key=version.artifact_key)
    with pytest.raises(WeightsMismatch, match="not in the bucket"):
        artifacts.artifact_local_path(version.artifact_sha256)


def test_readyz_reports_whether_the_active_artifact_can_be_read(operator, s3, anonymous_client):
    """The active uploaded version's object must be in the bucket with its size."""
    from registry.services import detector_version_activate

    version = _registered(operator)
    detector_version_activate(version_id=version.id)
    body = anonymous_client.get("/readyz").json()
    assert body["checks"]["detector"] == {"ok": True}
    storage.storage_delete(key=version.artifact_key)
    response = anonymous_client.get("/readyz")
    assert response.status_code == 503 and "detector" in response.json()["down"]


@pytest.fixture
def queued_job(api_client, s3, monkeypatch):
    monkeypatch.setattr("jobs.services.submission.image_job_enqueue", lambda *, image_id: None)

    def make(version_id: str) -> Image:
        response = upload(api_client, photo_bytes("astronaut_1face.png"), request_id=f"artifact-{version_id}", model_version=version_id)
        assert response.status_code == 202, response.json()
        return Image.objects.get(id=response.json()["id"])

    return make


def test_a_job_on_an_uploaded_version_gets_its_labelled_detections(operator, queued_job):
    """In-process: fetched, loaded, detected, labelled with the version's labels."""
    version = _registered(operator)
    job = queued_job(version.id)
    job_services.image_job_detect(image_id=job.id)
    job.refresh_from_db()
    assert job.status == "completed" and job.model_version == version.label
    assert sorted(job.faces.values_list("label", flat=True)) == ["dog", "person", "traffic_light"]


def test_a_broken_artifact_fails_only_its_job(operator, queued_job):
    """Bytes that OpenVINO cannot read under a registered digest: model_artifact_invalid, and the
    next job on a good version completes."""
    bad = b"\x08\x07" + b"not a graph" * 50
    digest = hashlib.sha256(bad).hexdigest()
    storage.storage_put(key=f"models/sha256/{digest}", data=bad, length=len(bad), content_type="application/octet-stream")
    good = _registered(operator)
    DetectorVersion.objects.create(
        id="broken@1.0.0",
        name="broken",
        version="1.0.0",
        implementation="yolo-onnx",
        weights=[{"file": "model.onnx", "sha256": digest}],
        settings={"classes": ["a"], "layout": "v8", "input_size": [64, 64], "precision": "f32"},
        settings_hash="x",
        labels=["a"],
        artifact_sha256=digest,
        artifact_size=len(bad),
        artifact_format="onnx",
    )
    broken_job = queued_job("broken@1.0.0")
    job_services.image_job_detect(image_id=broken_job.id)
    broken_job.refresh_from_db()
    assert broken_job.status == "failed" and broken_job.error_code == "model_artifact_invalid"
    good_job = queued_job(good.id)
    job_services.image_job_detect(image_id=good_job.id)
    good_job.refresh_from_db()
    assert good_job.status == "completed"
