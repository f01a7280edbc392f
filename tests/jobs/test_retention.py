"""Retention (jobs/retention.py): photos and annotated images past RETENTION_DAYS_* are deleted
from the real store in batches, their jobs marked, and the API answers 410 for them; what a
pending callback or a queued shadow run still needs is spared."""

import datetime as dt

import pytest
from django.utils import timezone

from callbacks.models import CallbackDelivery, DeliveryStatus
from jobs import retention, services
from jobs.models import Image, ShadowRun
from registry.models import DetectorVersion
from rollouts.services import rollout_start
from storage import s3 as storage
from tests.conftest import photo_bytes, store_status, upload
from workers import tasks

pytestmark = [pytest.mark.django_db]


@pytest.fixture
def finished_job(api_client, s3, monkeypatch, stub_detector):
    """Make a job, detected and annotated in-process (stub detector), its objects in the store."""
    monkeypatch.setattr("jobs.services.submission.image_job_enqueue", lambda *, image_id: None)

    def make(request_id: str, **fields) -> Image:
        response = upload(api_client, photo_bytes("astronaut_1face.png"), request_id=request_id, **fields)
        assert response.status_code == 202, response.content
        image_id = response.json()["id"]
        services.image_job_detect(image_id=image_id)
        services.image_job_annotate(image_id=image_id)
        return Image.objects.get(id=image_id)

    return make


def aged(image: Image, days: float) -> Image:
    """The job as if made ``days`` ago (and finished a minute later)."""
    made = timezone.now() - dt.timedelta(days=days)
    Image.objects.filter(id=image.id).update(created_at=made, finished_at=made + dt.timedelta(minutes=1))
    return Image.objects.get(id=image.id)


@pytest.fixture
def retention_on(settings):
    settings.RETENTION_DAYS_ORIGINALS = 30
    settings.RETENTION_DAYS_ANNOTATED = 30
    return settings


def test_an_expired_job_loses_both_objects_and_its_image_answers_410(api_client, finished_job, retention_on):
    """Past 30 days: both objects are gone from the store (404 there), the job is marked, the
    annotated image answers 410 expired; the job and its detections are still readable."""
    job = aged(finished_job("old"), days=31)
    assert store_status(job.original_key) == 200 and store_status(job.annotated_key) == 200

    counts = tasks.retention_sweep()

    assert counts["originals"] == 1 and counts["annotated"] == 1
    assert store_status(job.original_key) == 404 and store_status(job.annotated_key) == 404
    job.refresh_from_db()
    assert job.original_expired_at is not None and job.annotated_expired_at is not None
    response = api_client.get(f"/api/v1/images/{job.id}/annotated/")
    assert response.status_code == 410 and response.json()["error"]["code"] == "expired"
    body = api_client.get(f"/api/v1/images/{job.id}/").json()
    assert body["status"] == "completed" and body["face_count"] == 1 and len(body["faces"]) == 1
    assert body["output_image_url"] is None


def test_a_recent_job_is_kept(api_client, finished_job, retention_on):
    job = aged(finished_job("recent"), days=29)
    assert tasks.retention_sweep()["originals"] == 0
    assert store_status(job.original_key) == 200 and store_status(job.annotated_key) == 200
    assert api_client.get(f"/api/v1/images/{job.id}/annotated/").status_code == 200


def test_retention_is_off_by_default(finished_job, settings):
    """RETENTION_DAYS_* 0: nothing is ever deleted, however old."""
    assert settings.RETENTION_DAYS_ORIGINALS == 0 and settings.RETENTION_DAYS_ANNOTATED == 0
    job = aged(finished_job("ancient"), days=3650)
    assert tasks.retention_sweep() == {"originals": 0, "annotated": 0, "erasures": 0, "errors": 0}
    assert store_status(job.original_key) == 200 and store_status(job.annotated_key) == 200


def test_each_kind_has_its_own_period(finished_job, settings):
    """Originals after 7 days, annotated images after 90: a 10-day-old job keeps only the latter."""
    settings.RETENTION_DAYS_ORIGINALS, settings.RETENTION_DAYS_ANNOTATED = 7, 90
    job = aged(finished_job("ten-days"), days=10)
    counts = tasks.retention_sweep()
    assert (counts["originals"], counts["annotated"]) == (1, 0)
    assert store_status(job.original_key) == 404 and store_status(job.annotated_key) == 200


def test_a_backlog_is_deleted_in_batches(finished_job, retention_on):
    """Five expired jobs, batches of two: all of them in one run."""
    jobs = [aged(finished_job(f"backlog-{n}"), days=40) for n in range(5)]
    counts = retention.retention_sweep(batch_size=2)
    assert counts["originals"] == 5 and counts["annotated"] == 5
    assert {store_status(job.original_key) for job in jobs} == {404}


def test_a_pending_callback_keeps_the_objects(finished_job, retention_on, receiver):
    """Its receiver may still fetch output_image_url: nothing is deleted until it is settled."""
    job = finished_job("calling-back", callback_url=receiver.url())
    delivery = services.image_job_callback_delivery(image_id=job.id)
    job = aged(job, days=31)
    assert delivery.status == DeliveryStatus.PENDING
    assert tasks.retention_sweep()["originals"] == 0
    assert store_status(job.original_key) == 200 and store_status(job.annotated_key) == 200

    CallbackDelivery.objects.filter(id=delivery.id).update(status=DeliveryStatus.DELIVERED)
    assert tasks.retention_sweep()["originals"] == 1


def test_a_queued_shadow_run_keeps_the_photo(finished_job, retention_on):
    """A live rollout's comparison still has to read the photo."""
    DetectorVersion.objects.create(id="stub@0.0.1", name="stub", version="0.0.1", implementation="stub", settings_hash="")
    rollout = rollout_start(candidate="stub@0.0.1", mode="shadow", actor="test")
    job = aged(finished_job("shadowed"), days=31)
    ShadowRun.objects.get_or_create(job=job, rollout=rollout, defaults={"detector_version_id": "stub@0.0.1", "variant": "candidate"})
    assert tasks.retention_sweep()["originals"] == 0
    assert store_status(job.original_key) == 200


def test_a_job_that_just_finished_is_kept_whatever_its_age(finished_job, retention_on):
    """Made 31 days ago but finished minutes ago (stuck in a queue): its annotation and callback
    are under way."""
    job = aged(finished_job("late"), days=31)
    Image.objects.filter(id=job.id).update(finished_at=timezone.now())
    assert tasks.retention_sweep()["originals"] == 0
    assert store_status(job.original_key) == 200


def test_an_object_a_lifecycle_rule_removed_first_answers_410(api_client, finished_job, retention_on):
    """The bucket's own rule got there before the beat task: still 410 expired, not 404."""
    job = aged(finished_job("ruled"), days=31)
    storage.storage_delete(key=job.annotated_key)
    response = api_client.get(f"/api/v1/images/{job.id}/annotated/")
    assert response.status_code == 410 and response.json()["error"]["code"] == "expired"


def test_a_store_that_fails_stops_the_run_and_marks_nothing_it_did_not_delete(finished_job, retention_on, settings, s3):
    """Storage down: the run reports an error and the jobs stay unmarked, for the next run."""
    job = aged(finished_job("store-down"), days=31)
    settings.S3_ENDPOINT = "127.0.0.1:9"
    storage.reset_clients()
    try:
        counts = tasks.retention_sweep()
    finally:
        settings.S3_ENDPOINT = s3.endpoint
        storage.reset_clients()
    assert counts["errors"] >= 1 and counts["originals"] == 0
    job.refresh_from_db()
    assert job.original_expired_at is None and store_status(job.original_key) == 200
    assert tasks.retention_sweep()["originals"] == 1


def test_the_beat_schedule_runs_retention():
    from django.conf import settings

    entry = settings.CELERY_BEAT_SCHEDULE["delete-expired-photos"]
    assert entry["task"] == "workers.tasks.retention_sweep"
    assert settings.CELERY_TASK_ROUTES["workers.tasks.retention_sweep"]["queue"] == settings.CELERY_QUEUE_DELIVER
