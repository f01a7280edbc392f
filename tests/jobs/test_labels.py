"""Labels end to end, in-process with the stub detector: every detection has a label, "faces" keep
only faces (as they always had), "detections" have every one, an upload's `labels` keeps only the
labels asked for, checked against the version that runs the job, and the callback carries the
same."""

import json

import pytest

from callbacks.models import CallbackDelivery
from detection import engines
from jobs import services
from jobs.models import Face, Image
from registry import services as registry
from registry.models import DetectorVersion
from storage import s3 as storage
from tests.conftest import ROOT, photo_bytes, upload

pytestmark = [pytest.mark.django_db]

OBJECTS = "stub-objects@1.0.0"  # tests/data/versions: reports a person and a cat, could report dogs
MIXED = "stub-mixed@1.0.0"  # a face and a person


@pytest.fixture
def versions(monkeypatch, s3):
    """The object-label test version registered from its file, a mixed one made here; jobs
    driven by hand (nothing published)."""
    monkeypatch.setattr("jobs.services.submission.image_job_enqueue", lambda *, image_id: None)
    registry.detector_version_register(path=ROOT / "tests" / "data" / "versions" / f"{OBJECTS}.json")
    DetectorVersion.objects.create(
        id=MIXED,
        name="stub-mixed",
        version="1.0.0",
        implementation="stub",
        settings={"detections": ["person", "face"]},
        settings_hash="",
        labels=["face", "person"],
    )
    engines.clear_cache()
    yield
    engines.clear_cache()


def run(api_client, request_id: str, photo: str = "astronaut_1face.png", **fields) -> dict:
    """Submit, detect and annotate a job by hand; its GET body."""
    response = upload(api_client, photo_bytes(photo), request_id=request_id, **fields)
    assert response.status_code == 202, response.content
    image_id = response.json()["id"]
    services.image_job_detect(image_id=image_id)
    services.image_job_annotate(image_id=image_id)
    return api_client.get(f"/api/v1/images/{image_id}/").json()


def test_a_face_job_reads_as_it_always_did_plus_its_detections(api_client, s3, monkeypatch, stub_detector):
    """The face stub: faces and face_count unchanged (no label inside a face); the same face in
    detections with its label; labels null (none asked)."""
    monkeypatch.setattr("jobs.services.submission.image_job_enqueue", lambda *, image_id: None)
    body = run(api_client, "face-job")
    (face,) = body["faces"]
    assert body["face_count"] == 1 and set(face) == {"box", "confidence", "landmarks"}
    assert face["box"] == {"x": 128, "y": 128, "width": 256, "height": 256} and face["landmarks"]["nose"] == [256.0, 256.0]
    assert body["detections"] == [{"label": "face", **face}] and body["detection_count"] == 1
    assert body["labels"] is None
    assert Face.objects.get(image_id=body["id"]).label == "face"


def test_counts_are_null_until_the_job_is_completed(api_client, versions):
    """Queued: face_count and detection_count null, no detections."""
    response = upload(api_client, photo_bytes("coffee.png"), request_id="queued", model_version=OBJECTS)
    body = api_client.get(f"/api/v1/images/{response.json()['id']}/").json()
    assert (body["face_count"], body["faces"], body["detection_count"], body["detections"]) == (None, [], None, [])


def test_a_model_of_other_labels_has_detections_and_no_faces(api_client, versions):
    """A person and a cat: faces [] and face_count 0; detections with their labels, no landmarks,
    most confident first; rows labelled."""
    body = run(api_client, "objects", model_version=OBJECTS)
    assert body["status"] == "completed" and body["faces"] == [] and body["face_count"] == 0
    assert body["detection_count"] == 2
    assert [(d["label"], d["confidence"]) for d in body["detections"]] == [("person", 0.99), ("cat", 0.89)]
    assert all(d["landmarks"] == {} and set(d) == {"label", "box", "confidence", "landmarks"} for d in body["detections"])
    assert list(Face.objects.filter(image_id=body["id"]).values_list("index", "label")) == [(0, "person"), (1, "cat")]
    assert Image.objects.get(id=body["id"]).face_count == 0


def test_faces_keep_only_the_face_detections(api_client, versions):
    """A face and a person: faces has the face alone (in the face shape), detections both in
    confidence order."""
    body = run(api_client, "mixed", model_version=MIXED)
    assert [d["label"] for d in body["detections"]] == ["person", "face"] and body["detection_count"] == 2
    (face,) = body["faces"]
    assert body["face_count"] == 1 and {"label": "face", **face} == body["detections"][1]
    assert set(face["landmarks"]) == {"left_eye", "right_eye", "nose", "mouth_left", "mouth_right"}


@pytest.mark.parametrize("asked, kept", [("cat", ["cat"]), ("cat,person", ["person", "cat"]), ("dog", [])])
def test_labels_keep_only_the_labels_asked_for(api_client, versions, asked, kept):
    """Only the asked labels are stored and shown; a label the version could return but did not
    find leaves none. The job shows what it asked for."""
    body = run(api_client, f"keep-{asked}", model_version=OBJECTS, labels=asked)
    assert [d["label"] for d in body["detections"]] == kept and body["detection_count"] == len(kept)
    assert body["labels"] == asked.split(",")
    assert list(Face.objects.filter(image_id=body["id"]).values_list("label", flat=True)) == kept
    assert Image.objects.get(id=body["id"]).labels == asked.split(",")


def test_asking_for_faces_only_drops_the_rest(api_client, versions):
    body = run(api_client, "faces-only", model_version=MIXED, labels="face")
    assert [d["label"] for d in body["detections"]] == ["face"] and body["face_count"] == 1 and len(body["faces"]) == 1


def test_repeated_labels_are_dropped(api_client, versions):
    """Deduplicated, first one first."""
    body = run(api_client, "dedup", model_version=OBJECTS, labels="cat,person,cat")
    assert body["labels"] == ["cat", "person"]


def test_empty_labels_keep_every_label(api_client, versions):
    body = run(api_client, "empty-labels", model_version=OBJECTS, labels="")
    assert body["labels"] is None and body["detection_count"] == 2


def assert_refused(response, code: str | None = None) -> dict:
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["field"] == "labels" and error["message"], error
    if code:
        assert error["code"] == code
    assert Image.objects.count() == 0 and storage.storage_list() == []
    return error


@pytest.mark.parametrize(
    "labels",
    ["Cat", "cat,", ",cat", "cat,,dog", "cat, dog", " cat", "1cat", "_cat", "c-at", "a" * 65, "cat\n", "café", "cat;dog"],
)
def test_malformed_labels_are_a_400_naming_labels(api_client, versions, labels):
    """Each a label name, comma-separated without spaces: refused, named, nothing stored."""
    assert_refused(upload(api_client, photo_bytes("coffee.png"), request_id="bad", model_version=OBJECTS, labels=labels), "invalid")


def test_more_than_32_labels_are_a_400(api_client, versions):
    asked = ",".join(f"label_{n}" for n in range(33))
    error = assert_refused(upload(api_client, photo_bytes("coffee.png"), request_id="many", labels=asked), "too_many_labels")
    assert "32" in error["message"]


def test_32_labels_with_repeats_are_counted_once(api_client, versions):
    """Repeats do not count: 40 names of which 2 distinct pass the count (and are then checked
    against the version)."""
    response = upload(
        api_client, photo_bytes("coffee.png"), request_id="repeats", model_version=OBJECTS, labels=",".join(["cat", "dog"] * 20)
    )
    assert response.status_code == 202, response.content
    assert Image.objects.get().labels == ["cat", "dog"]


@pytest.mark.parametrize(
    "fields, named",
    [
        ({"labels": "cat"}, "cat"),  # the active version, mtcnn@1.0.0: faces only
        ({"labels": "face,cat"}, "cat"),
        ({"labels": "face", "model_version": OBJECTS}, "face"),  # the pinned version
        ({"labels": "person,horse", "model_version": OBJECTS}, "horse"),
    ],
)
def test_a_label_the_version_cannot_return_is_a_400(api_client, versions, fields, named):
    """Checked against the version that would run the job (pinned, else the active one):
    refused, named, nothing stored."""
    error = assert_refused(upload(api_client, photo_bytes("coffee.png"), request_id="unsupported", **fields), "unsupported_label")
    assert named in error["message"]


def test_face_is_a_label_of_face_models(api_client, versions):
    """labels=face on the active MTCNN version: accepted."""
    response = upload(api_client, photo_bytes("coffee.png"), request_id="face-on-mtcnn", labels="face")
    assert response.status_code == 202, response.content


def test_labels_are_checked_against_the_routed_version(api_client, versions):
    """During a rollout the version routing picks is the one checked: a canary at 100 % to the
    object model accepts cat and refuses face."""
    from rollouts.services import rollout_start

    rollout_start(candidate=OBJECTS, mode="canary", actor="test", stages=[{"weight": 100}])
    response = upload(api_client, photo_bytes("coffee.png"), request_id="routed", labels="cat")
    assert response.status_code == 202, response.content
    assert Image.objects.get().detector_version_id == OBJECTS
    refused = upload(api_client, photo_bytes("coffee.png"), request_id="routed-face", labels="face")
    assert refused.status_code == 400 and refused.json()["error"]["field"] == "labels"
    assert Image.objects.count() == 1


def test_resubmission_compares_labels(api_client, versions):
    """The same labels (any order) are the same submission (200, same id); other labels, or
    none, under the same request_id are a 409."""
    first = upload(api_client, photo_bytes("coffee.png"), request_id="again", model_version=OBJECTS, labels="cat,person")
    assert first.status_code == 202
    same = upload(api_client, photo_bytes("coffee.png"), request_id="again", model_version=OBJECTS, labels="person,cat")
    assert same.status_code == 200 and same.json()["id"] == first.json()["id"]
    for other in ({"labels": "cat"}, {}):
        response = upload(api_client, photo_bytes("coffee.png"), request_id="again", model_version=OBJECTS, **other)
        assert response.status_code == 409 and response.json()["error"]["code"] == "request_id_conflict", other
    assert Image.objects.count() == 1


def test_the_callback_carries_the_detections(api_client, versions, receiver):
    """The callback body is the GET body (but its callback block): detections, counts and labels."""
    body = run(api_client, "called-back", model_version=OBJECTS, labels="cat", callback_url=receiver.url())
    delivery = services.image_job_callback_delivery(image_id=body["id"])
    sent = json.loads(CallbackDelivery.objects.get(id=delivery.id).body)
    assert {k: v for k, v in sent.items() if k != "callback"} == {k: v for k, v in body.items() if k != "callback"}
    assert sent["labels"] == ["cat"] and [d["label"] for d in sent["detections"]] == ["cat"] and sent["faces"] == []


def test_the_annotated_photo_is_made_for_an_object_job(api_client, versions):
    body = run(api_client, "drawn", model_version=OBJECTS)
    response = api_client.get(f"/api/v1/images/{body['id']}/annotated/")
    assert response.status_code == 200 and b"".join(response.streaming_content)[:3] == b"\xff\xd8\xff"


def test_the_admin_shows_labels(api_client, versions, client):
    """The job page: each detection's label, and the labels the job asked for."""
    from django.contrib.auth.models import User

    body = run(api_client, "admin-labels", model_version=OBJECTS, labels="cat,person")
    User.objects.create_superuser("ops", "ops@example.com", "pw")
    client.login(username="ops", password="pw")
    page = client.get(f"/admin/jobs/image/{body['id']}/change/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "Detections" in html and "Label" in html and "person" in html and "cat" in html


# --- Shadow runs: a detection matches only one of its own label ----------------------------------


def shadow_of(api_client, candidate_detections: list[str], request_id: str, **fields):
    """The object model as the active baseline, a stub candidate reporting ``candidate_detections``
    in shadow; a job run by hand, then its shadow run. Returns (job body, run)."""
    from jobs.models import ShadowRun
    from rollouts.services import rollout_start

    registry.detector_version_activate(version_id=OBJECTS)
    DetectorVersion.objects.create(
        id="stub-candidate@1.0.0",
        name="stub-candidate",
        version="1.0.0",
        implementation="stub",
        settings={"detections": candidate_detections},
        settings_hash="",
        labels=["person", "cat", "dog"],
    )
    rollout_start(candidate="stub-candidate@1.0.0", mode="shadow", actor="test")
    body = run(api_client, request_id, **fields)
    shadow = ShadowRun.objects.get(job_id=body["id"])
    services.shadow_run_detect(shadow_run_id=shadow.id)
    shadow.refresh_from_db()
    return body, shadow


def test_a_shadow_run_stores_labelled_detections_and_agrees_by_label(api_client, versions):
    """The same boxes with the same labels: agreement 1; the run stores the job's detection shape."""
    body, shadow = shadow_of(api_client, ["person", "cat"], "shadow-same")
    assert shadow.status == "completed" and shadow.faces == body["detections"] and shadow.face_count == 0
    assert shadow.agreement == 1.0


def test_boxes_of_other_labels_do_not_agree(api_client, versions):
    """The candidate calls the baseline's person a cat and its cat a person, box for box: no
    match at all (agreement 0), where boxes alone would agree perfectly."""
    from detection.compare import agreement, boxes_of

    body, shadow = shadow_of(api_client, ["cat", "person"], "shadow-swapped")
    assert [d["label"] for d in shadow.faces] == ["cat", "person"]
    assert boxes_of(shadow.faces) == boxes_of(body["detections"])
    assert agreement(boxes_of(shadow.faces), boxes_of(body["detections"])) == 1.0
    assert shadow.agreement == 0.0


def test_the_jobs_labels_apply_to_its_shadow_run(api_client, versions):
    """Asked for cats only: the shadow run keeps only cats too, and agrees on them."""
    body, shadow = shadow_of(api_client, ["person", "cat"], "shadow-cats", labels="cat")
    assert [d["label"] for d in body["detections"]] == ["cat"] == [d["label"] for d in shadow.faces]
    assert shadow.agreement == 1.0
