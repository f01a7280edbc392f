"""The model registry: versions from files, checksums, the active pointer, per-upload versions."""

import json

import pytest
from django.core.management import call_command

from jobs import services
from jobs.models import Face, Image
from registry import services as registry
from registry.models import DetectorVersion
from tests.conftest import ROOT, photo_bytes, upload

pytestmark = [pytest.mark.django_db]


@pytest.fixture
def no_enqueue(monkeypatch):
    monkeypatch.setattr("jobs.services.submission.image_job_enqueue", lambda *, image_id: None)


def test_the_shipped_versions_are_registered_with_their_record():
    """id, label, weights with sha256, packages, settings and their hash, commit."""
    version = DetectorVersion.objects.get(id="mtcnn@1.0.0")
    assert version.label.startswith("mtcnn@1.0.0+weights.") and len(version.label) == len("mtcnn@1.0.0+weights.") + 8
    assert {w["file"] for w in version.weights} == {"pnet.pt", "rnet.pt", "onet.pt"}
    assert version.packages["facenet-pytorch"] == "2.5.3" and version.packages["torch"].startswith("2.")
    assert version.settings["min_face_size"] == 20 and len(version.settings_hash) == 64
    assert DetectorVersion.objects.get(id="mtcnn@1.1.0").settings["min_confidence"] == 0.9


def test_a_checksum_mismatch_is_refused_at_registration(tmp_path):
    data = json.loads((ROOT / "detector_versions" / "mtcnn@1.0.0.json").read_text())
    data["version"] = "9.0.0"
    data["weights"][0]["sha256"] = "0" * 64
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(registry.RegistryError, match="sha256"):
        registry.detector_version_register(path=path)
    assert not DetectorVersion.objects.filter(id="mtcnn@9.0.0").exists()


def test_a_registered_version_cannot_change(tmp_path):
    data = json.loads((ROOT / "detector_versions" / "mtcnn@1.0.0.json").read_text())
    data["settings"]["min_confidence"] = 0.5
    path = tmp_path / "changed.json"
    path.write_text(json.dumps(data))
    with pytest.raises(registry.RegistryError, match="immutable"):
        registry.detector_version_register(path=path)


def test_a_job_records_its_version(api_client, s3, no_enqueue, stub_detector):
    """The job and each face name the version; the API returns its label."""
    body = upload(api_client, photo_bytes("astronaut_1face.png"), request_id="v").json()
    services.image_job_detect(image_id=body["id"])
    job = Image.objects.get(id=body["id"])
    assert job.detector_version_id == "stub@0.0.0" and job.model_version == stub_detector.label
    assert set(Face.objects.filter(image=job).values_list("detector_version_id", flat=True)) == {"stub@0.0.0"}
    assert api_client.get(f"/api/v1/images/{job.id}/").json()["model_version"] == stub_detector.label


def test_switching_the_active_version_changes_new_jobs_only(api_client, s3, no_enqueue):
    before = upload(api_client, photo_bytes("coffee.png"), request_id="before").json()["id"]
    call_command("detector_activate", "mtcnn@1.1.0")
    after = upload(api_client, photo_bytes("coffee.png"), request_id="after").json()["id"]
    assert Image.objects.get(id=before).detector_version_id == "mtcnn@1.0.0"
    assert Image.objects.get(id=after).detector_version_id == "mtcnn@1.1.0"


def test_a_per_upload_version_is_honoured(api_client, s3, no_enqueue):
    image_id = upload(api_client, photo_bytes("coffee.png"), request_id="pinned", model_version="mtcnn@1.1.0").json()["id"]
    assert Image.objects.get(id=image_id).detector_version_id == "mtcnn@1.1.0"


@pytest.mark.parametrize("requested, code", [("mtcnn@9.9.9", "unknown_model_version"), ("mtcnn@1.1.0", "retired_model_version")])
def test_an_unknown_or_retired_version_is_a_400(api_client, s3, no_enqueue, requested, code):
    registry.detector_version_retire(version_id="mtcnn@1.1.0")
    response = upload(api_client, photo_bytes("coffee.png"), request_id="r", model_version=requested)
    assert response.status_code == 400
    assert response.json()["error"] == {"code": code, "message": response.json()["error"]["message"], "field": "model_version"}
    assert Image.objects.count() == 0


def test_the_active_version_cannot_be_retired():
    with pytest.raises(registry.RegistryError, match="active"):
        registry.detector_version_retire(version_id="mtcnn@1.0.0")


def test_models_api_lists_and_shows_versions(api_client):
    body = api_client.get("/api/v1/models/").json()
    by_id = {v["id"]: v for v in body["results"]}
    assert {"mtcnn@1.0.0", "mtcnn@1.1.0"} <= set(by_id)
    assert by_id["mtcnn@1.0.0"]["active"] is True and by_id["mtcnn@1.1.0"]["active"] is False
    one = api_client.get("/api/v1/models/mtcnn@1.1.0/").json()
    assert set(one) >= {"id", "name", "version", "active", "weights", "settings", "settings_hash", "created_at"}
    assert all(len(w["sha256"]) == 64 for w in one["weights"])
    assert api_client.get("/api/v1/models/nope@1.0.0/").status_code == 404


def test_readyz_reports_weights_that_no_longer_match(api_client, s3):
    """A registered checksum that the files on disk do not match: not ready, naming the detector."""
    DetectorVersion.objects.filter(id="mtcnn@1.0.0").update(weights=[{"file": "pnet.pt", "sha256": "0" * 64}])
    body = api_client.get("/readyz").json()
    assert "detector" in body["down"] and "sha256" in body["checks"]["detector"]["error"]


def test_a_worker_refuses_weights_that_do_not_match_and_the_job_says_so(api_client, s3, no_enqueue):
    """A version whose registered checksum differs from the file: the job fails with a clear code."""
    good = DetectorVersion.objects.get(id="mtcnn@1.0.0")
    DetectorVersion.objects.create(
        id="mtcnn@8.0.0",
        name="mtcnn",
        version="8.0.0",
        implementation="mtcnn",
        settings=good.settings,
        settings_hash=good.settings_hash,
        weights=[{**w, "sha256": "0" * 64} for w in good.weights],
    )
    image_id = upload(api_client, photo_bytes("coffee.png"), request_id="bad-weights", model_version="mtcnn@8.0.0").json()["id"]
    services.image_job_detect(image_id=image_id)
    job = Image.objects.get(id=image_id)
    assert job.status == "failed" and job.error_code == "model_weights_mismatch"
