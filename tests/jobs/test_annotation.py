"""The annotated image is drawn in the detect task, on the photo it decoded (jobs/services/
annotation.py), and recorded with the faces; the deliverer draws it only for a job that reaches
it without one. In-process with the stub detector."""

import pytest

from jobs import services
from jobs.models import Image, JobStatus
from registry.models import DetectorVersion
from storage import s3 as storage
from tests.conftest import photo_bytes, store_status, upload

pytestmark = [pytest.mark.django_db]

MIXED = "stub-mixed@1.0.0"  # a person and a face: two colours, one set of landmarks


@pytest.fixture
def submit(api_client, s3, monkeypatch, stub_detector):
    """Upload a photo as a queued job whose chain is not published (driven by hand)."""
    monkeypatch.setattr("jobs.services.submission.image_job_enqueue", lambda *, image_id: None)
    DetectorVersion.objects.create(
        id=MIXED,
        name="stub-mixed",
        version="1.0.0",
        implementation="stub",
        settings={"detections": ["person", "face"]},
        settings_hash="",
        labels=["face", "person"],
    )

    def submit(name: str, **fields) -> Image:
        response = upload(api_client, photo_bytes(name), name=name, request_id=f"annotation-{name}-{fields}", **fields)
        assert response.status_code == 202, response.content
        return Image.objects.get(id=response.json()["id"])

    return submit


@pytest.mark.parametrize("name", ["astronaut_1face.png", "grace_hopper_1face.jpg", "obama_1face.jpg", "coffee.png"])
@pytest.mark.parametrize("version", [None, MIXED])
def test_the_detect_task_draws_the_same_bytes_the_deliverer_drew(submit, name, version):
    """Byte for byte the JPEG the deliverer's own path draws from the stored rows and a fresh
    decode of the stored photo (what every job got before)."""
    job = submit(name, **({"model_version": version} if version else {}))
    services.image_job_detect(image_id=job.id)
    job.refresh_from_db()
    assert job.status == JobStatus.COMPLETED and job.annotated_key == services.annotated_object_key(job)
    drawn_in_detect = storage.storage_get(key=job.annotated_key)
    # The deliverer's path, as it runs for a job that arrives without one.
    Image.objects.filter(id=job.id).update(annotated_key="")
    storage.storage_delete(key=job.annotated_key)
    services.image_job_annotate(image_id=job.id)
    job.refresh_from_db()
    assert storage.storage_get(key=job.annotated_key) == drawn_in_detect
    assert drawn_in_detect[:3] == b"\xff\xd8\xff"


def test_a_drawing_that_fails_is_left_to_the_deliverer(submit, monkeypatch):
    """The job completes without one; the deliverer then draws it."""
    job = submit("astronaut_1face.png")

    def broken(**_):
        raise OSError("no room for the font")

    monkeypatch.setattr("jobs.services.annotation.annotation_jpeg", broken)
    services.image_job_detect(image_id=job.id)
    job.refresh_from_db()
    assert job.status == JobStatus.COMPLETED and job.annotated_key == "" and job.face_count == 1
    assert store_status(services.annotated_object_key(job)) == 404
    services.image_job_annotate(image_id=job.id)
    job.refresh_from_db()
    assert job.annotated_key and store_status(job.annotated_key) == 200


def test_a_job_ended_while_it_was_drawn_keeps_no_annotated_image(submit, monkeypatch):
    """Cancelled (or erased) between the drawing and the completion: the object is deleted."""
    job = submit("astronaut_1face.png")
    from jobs.services import annotation

    real = annotation.annotation_jpeg

    def draw_then_cancel(**kwargs):
        Image.objects.filter(id=job.id).update(status=JobStatus.CANCELED)
        return real(**kwargs)

    monkeypatch.setattr("jobs.services.annotation.annotation_jpeg", draw_then_cancel)
    services.image_job_detect(image_id=job.id)
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELED and job.annotated_key == ""
    assert store_status(services.annotated_object_key(job)) == 404


def test_an_erased_jobs_drawing_is_deleted_even_while_erasure_names_its_key(submit, monkeypatch):
    """Erasure writes the key it purges into the row: a drawing put after erasure's delete must
    still go (the job is deleted), or it would outlive the erasure for good."""
    job = submit("astronaut_1face.png")
    from jobs.services import annotation

    real = annotation.annotation_jpeg
    key = services.annotated_object_key(job)

    def draw_while_erased(**kwargs):
        Image.objects.filter(id=job.id).update(status=JobStatus.DELETED, annotated_key=key)
        return real(**kwargs)

    monkeypatch.setattr("jobs.services.annotation.annotation_jpeg", draw_while_erased)
    services.image_job_detect(image_id=job.id)
    assert store_status(key) == 404


def test_a_completion_that_fails_leaves_no_unrecorded_drawing(submit, monkeypatch):
    """The database fails as the job completes: the task's retry draws again; meanwhile no
    drawing is left that the job does not name."""
    from django.db import OperationalError

    job = submit("astronaut_1face.png")

    def down(**_):
        raise OperationalError("database away")

    monkeypatch.setattr("jobs.services.detection.image_job_complete", down)
    with pytest.raises(services.JobInterrupted):  # the task retries it
        services.image_job_detect(image_id=job.id)
    assert store_status(services.annotated_object_key(job)) == 404
