"""The job state machine, run in-process with the stub detector: fast, and strict about repeats."""

import datetime as dt
import uuid

import pytest
from django.utils import timezone

from jobs import services
from jobs.models import Face, Image
from registry.models import DetectorVersion
from storage import s3 as storage
from tests.conftest import photo_bytes, upload

pytestmark = [pytest.mark.django_db]


@pytest.fixture
def job(api_client, s3, settings, monkeypatch, stub_detector):
    """A queued job whose chain was not published (the tests drive it by hand)."""
    monkeypatch.setattr("jobs.services.submission.image_job_enqueue", lambda *, image_id: None)
    response = upload(api_client, photo_bytes("astronaut_1face.png"), request_id="lifecycle")
    return Image.objects.get(id=response.json()["id"])


def test_detection_completes_the_job_with_its_faces(job):
    """queued -> processing -> completed, with the faces, the version and the timestamps."""
    services.image_job_detect(image_id=job.id)
    job.refresh_from_db()
    assert job.status == "completed"
    assert job.face_count == 1 == job.faces.count()
    assert job.model_version.startswith("stub@0.0.0+weights.")
    assert job.attempts == 1
    assert job.created_at <= job.started_at <= job.finished_at


def test_a_redelivered_detection_does_not_duplicate_faces(job):
    """A task that runs again after completion changes nothing."""
    services.image_job_detect(image_id=job.id)
    finished_at = job.__class__.objects.get(id=job.id).finished_at
    services.image_job_detect(image_id=job.id)
    job.refresh_from_db()
    assert Face.objects.filter(image=job).count() == 1
    assert job.finished_at == finished_at and job.attempts == 1


def test_a_crashed_attempt_is_replaced_not_added_to(job):
    """A job left processing (its worker died) is detected again, its faces written once."""
    services.image_job_start(image_id=job.id)
    Face.objects.create(
        image=job, detector_version_id=job.detector_version_id, index=0, box_x=1, box_y=1, box_width=1, box_height=1, confidence=0.5
    )
    services.image_job_detect(image_id=job.id, redelivered=True)
    job.refresh_from_db()
    assert job.status == "completed" and job.attempts == 2
    assert list(job.faces.values_list("box_x", flat=True)) == [128]


def test_a_job_that_keeps_crashing_fails_instead_of_looping(job):
    """After MAX_DETECT_ATTEMPTS unfinished starts, the next delivery fails the job."""
    for _ in range(services.MAX_DETECT_ATTEMPTS):
        services.image_job_start(image_id=job.id, redelivered=True)
    services.image_job_detect(image_id=job.id, redelivered=True)
    job.refresh_from_db()
    assert job.status == "failed" and job.error_code == "too_many_attempts"


def test_a_duplicate_message_does_not_run_a_job_that_is_processing(job):
    """A fresh copy of the message (not a broker redelivery) leaves a running job to its worker."""
    services.image_job_start(image_id=job.id)
    assert services.image_job_start(image_id=job.id) is None
    job.refresh_from_db()
    assert job.status == "processing" and job.attempts == 1


def test_a_stale_processing_job_is_taken_over(job, settings):
    """Past the hard time limit, the worker that started it is gone: a new copy takes over."""
    services.image_job_start(image_id=job.id)
    Image.objects.filter(id=job.id).update(started_at=timezone.now() - dt.timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT + 60))
    assert services.image_job_start(image_id=job.id) is not None


def test_completing_a_job_that_is_not_processing_is_refused(job):
    """The state is checked first: a queued job cannot jump to completed."""
    assert services.image_job_complete(image_id=job.id, faces=[], model_version="x", width=1, height=1) is False
    job.refresh_from_db()
    assert job.status == "queued"


def test_failing_a_terminal_job_changes_nothing(job):
    """completed stays completed."""
    services.image_job_detect(image_id=job.id)
    assert services.image_job_fail(image_id=job.id, code="x", message="y") is False
    job.refresh_from_db()
    assert job.status == "completed" and job.error_code == ""


def test_an_undecodable_original_fails_the_job_with_a_code(job):
    """Permanent errors fail at once: the stored object is replaced by garbage behind the API's back."""
    storage.storage_put(key=job.original_key, data=b"garbage", length=7, content_type="image/png")
    services.image_job_detect(image_id=job.id)
    job.refresh_from_db()
    assert job.status == "failed" and job.error_code == "image_unreadable"


def test_an_unknown_implementation_fails_the_job_with_a_code(job):
    """A version whose implementation this worker lacks fails jobs clearly instead of crashing."""
    DetectorVersion.objects.create(id="nope@1.0.0", name="nope", version="1.0.0", implementation="nope", settings_hash="")
    Image.objects.filter(id=job.id).update(detector_version_id="nope@1.0.0")
    services.image_job_detect(image_id=job.id)
    job.refresh_from_db()
    assert job.status == "failed" and job.error_code == "detector_unavailable"


def test_storage_trouble_propagates_for_the_task_to_retry(job, settings, s3):
    """Transient errors are raised, not turned into a failed job: after the start, as
    JobInterrupted with the attempt that the task's retry resumes."""
    settings.S3_ENDPOINT = "127.0.0.1:9"
    storage.reset_clients()
    try:
        with pytest.raises(services.JobInterrupted) as raised:
            services.image_job_detect(image_id=job.id)
        assert isinstance(raised.value.__cause__, storage.StorageError) and raised.value.attempt == 1
    finally:
        settings.S3_ENDPOINT = s3.endpoint
        storage.reset_clients()
    services.image_job_requeue(image_id=job.id)
    job.refresh_from_db()
    assert job.status == "queued"


def test_annotation_stores_a_jpeg_once(job):
    """The annotated copy goes under a fixed key; running it again does not add objects."""
    services.image_job_detect(image_id=job.id)
    services.image_job_annotate(image_id=job.id)
    services.image_job_annotate(image_id=job.id)
    job.refresh_from_db()
    assert job.annotated_key.startswith("annotated/") and job.annotated_key.endswith(f"{job.id}.jpg")
    assert sorted(storage.storage_list()) == sorted([job.original_key, job.annotated_key])
    assert storage.storage_get(key=job.annotated_key)[:3] == b"\xff\xd8\xff"


def test_unknown_job_ids_are_skipped(db):
    """A task for a row that does not exist does nothing."""
    assert services.image_job_start(image_id=uuid.uuid4()) is None
