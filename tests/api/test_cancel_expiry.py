"""POST /api/v1/images/{id}/cancel/ and expires_in: a queued job ends canceled or expired, is
never detected, is called back through the outbox, counted, and told to the job_ended hook."""

import datetime as dt
import json
import threading

import pytest
from django.db import connection, transaction
from django.utils import timezone

from callbacks.models import CallbackDelivery
from jobs import services
from jobs.models import Image
from jobs.services import lifecycle
from tests.api.test_submit import assert_error
from tests.conftest import photo_bytes, upload
from tests.observability.test_metrics import delta, scrape

pytestmark = [pytest.mark.django_db]


@pytest.fixture
def by_hand(monkeypatch, s3, stub_detector):
    """Jobs are recorded but not published, nor their deliveries sent: the tests drive them.
    Returns the deliveries handed to the sender."""
    sent: list[int] = []
    monkeypatch.setattr("jobs.services.submission.image_job_enqueue", lambda *, image_id: None)
    monkeypatch.setattr("jobs.services.lifecycle.callback_delivery_enqueue", lambda *, delivery_id: sent.append(delivery_id))
    return sent


@pytest.fixture
def ended(monkeypatch):
    """The jobs job_ended told its listeners about, in order."""
    seen: list[tuple[str, str]] = []
    monkeypatch.setattr(lifecycle, "_job_ended_listeners", [])
    services.job_ended_listen(lambda image: seen.append((str(image.id), image.status)))
    return seen


def submit(api_client, request_id: str, **fields) -> Image:
    response = upload(api_client, photo_bytes("astronaut_1face.png"), request_id=request_id, **fields)
    assert response.status_code == 202, response.content
    return Image.objects.get(id=response.json()["id"])


def cancel(api_client, image_id):
    return api_client.post(f"/api/v1/images/{image_id}/cancel/")


def test_a_queued_job_is_canceled_called_back_counted_and_told(
    api_client, anonymous_client, by_hand, ended, receiver, django_capture_on_commit_callbacks
):
    """200 with the job canceled (error code canceled); its callback is in the outbox; one
    finished job counted; job_ended told once."""
    job = submit(api_client, "c-1", callback_url=receiver.url())
    before = scrape(anonymous_client)
    with django_capture_on_commit_callbacks(execute=True):
        response = cancel(api_client, job.id)
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["status"], body["error"]["code"], body["finished_at"] is not None) == ("canceled", "canceled", True)
    (delivery,) = CallbackDelivery.objects.filter(image_id=job.id)
    assert by_hand == [delivery.id]  # handed to the sender at once, not left to the job's chain
    sent = json.loads(delivery.body)
    assert (sent["status"], sent["error"]["code"], sent["id"]) == ("canceled", "canceled", str(job.id))
    assert ended == [(str(job.id), "canceled")]
    after = scrape(anonymous_client)
    assert (
        delta(
            before, after, "fda_jobs_finished_total", model_version="stub@0.0.0", variant="none", status="canceled", error_code="canceled"
        )
        == 1
    )
    # The job's own chain, when it runs later, detects nothing and makes no second delivery.
    services.image_job_detect(image_id=job.id)
    assert Image.objects.get(id=job.id).status == "canceled"
    assert services.image_job_callback_delivery(image_id=job.id).id == delivery.id
    assert not Image.objects.get(id=job.id).faces.exists()


def test_a_started_job_is_409_job_already_started(api_client, by_hand):
    job = submit(api_client, "c-2")
    assert services.image_job_start(image_id=job.id) is not None
    assert_error(cancel(api_client, job.id), 409, None, "job_already_started")
    assert Image.objects.get(id=job.id).status == "processing"


def test_a_finished_job_is_409_job_finished(api_client, by_hand):
    job = submit(api_client, "c-3")
    services.image_job_detect(image_id=job.id)
    assert_error(cancel(api_client, job.id), 409, None, "job_finished")
    assert Image.objects.get(id=job.id).status == "completed"


def test_canceling_twice_is_409_job_finished(api_client, by_hand):
    job = submit(api_client, "c-4")
    assert cancel(api_client, job.id).status_code == 200
    assert_error(cancel(api_client, job.id), 409, None, "job_finished")


def test_another_clients_job_is_404(api_client, by_hand):
    from rest_framework.test import APIClient

    from clients.services import api_key_create

    job = submit(api_client, "c-5")
    other = APIClient()
    other.credentials(HTTP_X_API_KEY=api_key_create(client_name="other")[1])
    assert_error(cancel(other, job.id), 404, None, "not_found")
    assert Image.objects.get(id=job.id).status == "queued"


def test_bulk_cancel_ends_only_queued_jobs(api_client, by_hand, ended):
    """image_jobs_cancel: queued ones end canceled; a started one finishes; a finished one stays."""
    queued = [submit(api_client, f"b-{n}") for n in range(3)]
    started = submit(api_client, "b-started")
    services.image_job_start(image_id=started.id)
    done = submit(api_client, "b-done")
    services.image_job_detect(image_id=done.id)
    count = services.image_jobs_cancel(queryset=Image.objects.filter(request_id__startswith="b-"))
    assert count == 3
    statuses = dict(Image.objects.filter(request_id__startswith="b-").values_list("request_id", "status"))
    assert statuses == {"b-0": "canceled", "b-1": "canceled", "b-2": "canceled", "b-started": "processing", "b-done": "completed"}
    for job in queued:
        services.image_job_detect(image_id=job.id)
        image = Image.objects.get(id=job.id)
        assert (image.status, image.attempts, image.started_at) == ("canceled", 0, None)


def test_expires_in_sets_expires_at(api_client, by_hand):
    response = upload(api_client, photo_bytes("astronaut_1face.png"), request_id="e-0", expires_in=600)
    image = Image.objects.get(id=response.json()["id"])
    assert dt.timedelta(seconds=590) < image.expires_at - image.created_at <= dt.timedelta(seconds=601)
    body = api_client.get(f"/api/v1/images/{image.id}/").json()
    assert body["expires_at"] is not None


def test_a_job_past_its_expiry_ends_expired_when_the_detect_task_starts(api_client, by_hand, ended):
    """Checked at start: expired, not detected, and the chained delivery calls back."""
    job = submit(api_client, "e-1", expires_in=60)
    Image.objects.filter(id=job.id).update(expires_at=timezone.now() - dt.timedelta(seconds=1))
    services.image_job_detect(image_id=job.id)
    image = Image.objects.get(id=job.id)
    assert (image.status, image.error_code, image.attempts, image.started_at) == ("expired", "expired", 0, None)
    assert not image.faces.exists()


def test_a_job_not_yet_expired_is_detected(api_client, by_hand):
    job = submit(api_client, "e-2", expires_in=60)
    services.image_job_detect(image_id=job.id)
    assert Image.objects.get(id=job.id).status == "completed"


def test_the_sweep_expires_queued_jobs_past_their_time_and_calls_them_back(api_client, by_hand, ended, receiver):
    """image_jobs_expire_sweep: only queued jobs past expires_at; each gets its callback."""
    due = submit(api_client, "s-due", expires_in=60, callback_url=receiver.url())
    later = submit(api_client, "s-later", expires_in=3600)
    never = submit(api_client, "s-never")
    started = submit(api_client, "s-started", expires_in=60)
    services.image_job_start(image_id=started.id)
    past = timezone.now() - dt.timedelta(seconds=5)
    Image.objects.filter(id__in=[due.id, started.id]).update(expires_at=past)
    assert services.image_jobs_expire_sweep() == 1
    statuses = dict(Image.objects.filter(request_id__startswith="s-").values_list("request_id", "status"))
    assert statuses == {"s-due": "expired", "s-later": "queued", "s-never": "queued", "s-started": "processing"}
    (delivery,) = CallbackDelivery.objects.filter(image_id=due.id)
    assert json.loads(delivery.body)["status"] == "expired"
    assert not CallbackDelivery.objects.filter(image_id__in=[later.id, never.id, started.id]).exists()
    assert services.image_jobs_expire_sweep() == 0


def test_job_ended_is_told_of_every_terminal_transition(api_client, by_hand, ended, django_capture_on_commit_callbacks):
    """Completed, failed, canceled, expired: each once, after it commits."""
    with django_capture_on_commit_callbacks(execute=True):
        completed = submit(api_client, "h-ok")
        services.image_job_detect(image_id=completed.id)
        failed = submit(api_client, "h-failed")
        services.image_job_fail(image_id=failed.id, code="x", message="y")
        canceled = submit(api_client, "h-canceled")
        services.image_job_cancel(image_id=canceled.id)
        expired = submit(api_client, "h-expired", expires_in=60)
        Image.objects.filter(id=expired.id).update(expires_at=timezone.now() - dt.timedelta(seconds=1))
        services.image_jobs_expire_sweep()
    assert sorted(ended) == sorted(
        [(str(completed.id), "completed"), (str(failed.id), "failed"), (str(canceled.id), "canceled"), (str(expired.id), "expired")]
    )


def test_lifecycle_prefetches_what_the_selectors_do():
    """lifecycle keeps its own copy of JOB_PREFETCH (an import circle otherwise): the same."""
    from jobs import selectors

    assert lifecycle.JOB_PREFETCH == selectors.JOB_PREFETCH


def test_a_canceled_uploads_photo_is_deleted_by_retention(api_client, by_hand, settings):
    """Retention takes the photo of a canceled (or expired) job like a finished one's."""
    from jobs import retention
    from tests.conftest import store_status

    settings.RETENTION_DAYS_ORIGINALS = 30
    job = submit(api_client, "r-1")
    services.image_job_cancel(image_id=job.id)
    made = timezone.now() - dt.timedelta(days=31)
    Image.objects.filter(id=job.id).update(created_at=made, finished_at=made + dt.timedelta(minutes=1))
    assert store_status(job.original_key) == 200
    assert retention.retention_sweep()["originals"] == 1
    assert store_status(job.original_key) == 404
    assert Image.objects.get(id=job.id).original_expired_at is not None


def _in_thread(target) -> threading.Thread:
    def run():
        try:
            target()
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.mark.django_db(transaction=True)
def test_a_cancel_waits_for_a_starting_detect_task_and_loses(api_client, by_hand):
    """The detect task's start holds the row: the cancel's conditional update waits, then finds
    the job processing (409 job_already_started); it never cancels a job being detected."""
    job = submit(api_client, "race-1")
    locked, release, outcome = threading.Event(), threading.Event(), {}

    def start():
        with transaction.atomic():
            outcome["started"] = services.image_job_start(image_id=job.id) is not None
            locked.set()
            release.wait(20)

    def cancel_it():
        try:
            services.image_job_cancel(image_id=job.id)
            outcome["cancel"] = "canceled"
        except services.JobNotCancelable as exc:
            outcome["cancel"] = exc.code

    starter = _in_thread(start)
    assert locked.wait(20)
    canceller = _in_thread(cancel_it)
    canceller.join(0.5)
    assert canceller.is_alive()  # waiting for the row
    release.set()
    starter.join(20)
    canceller.join(20)
    assert outcome == {"started": True, "cancel": "job_already_started"}
    assert Image.objects.get(id=job.id).status == "processing"


@pytest.mark.django_db(transaction=True)
def test_a_detect_task_starting_during_a_cancel_waits_and_skips_the_job(api_client, by_hand):
    """The other order: the cancel holds the row; the start waits, then finds it canceled."""
    job = submit(api_client, "race-2")
    locked, release, outcome = threading.Event(), threading.Event(), {}

    def cancel_it():
        with transaction.atomic():
            services.image_job_cancel(image_id=job.id)
            locked.set()
            release.wait(20)

    def start():
        outcome["started"] = services.image_job_start(image_id=job.id) is not None

    canceller = _in_thread(cancel_it)
    assert locked.wait(20)
    starter = _in_thread(start)
    starter.join(0.5)
    assert starter.is_alive()
    release.set()
    canceller.join(20)
    starter.join(20)
    assert outcome == {"started": False}
    image = Image.objects.get(id=job.id)
    assert (image.status, image.attempts) == ("canceled", 0)


def test_the_admin_filters_canceled_jobs_and_cancels_queued_ones(client, api_client, by_hand):
    """Operators see canceled jobs by the status filter, and the Cancel action ends a queued job."""
    from django.contrib.auth.models import User

    User.objects.create_superuser("ops", "ops@example.com", "pw")
    client.login(username="ops", password="pw")
    queued = submit(api_client, "admin-queued")
    response = client.post("/admin/jobs/image/", {"action": "cancel", "_selected_action": [str(queued.id)]})
    assert response.status_code == 302
    assert Image.objects.get(id=queued.id).status == "canceled"
    listed = client.get("/admin/jobs/image/?status__exact=canceled")
    assert listed.status_code == 200 and b"admin-queued" in listed.content
    page = client.get(f"/admin/jobs/image/{queued.id}/change/")
    assert page.status_code == 200 and b"canceled" in page.content


def test_the_beat_expires_queued_jobs_with_a_task_of_its_own(settings):
    """expire-queued-jobs runs workers.tasks.expire_jobs, routed like the sweep."""
    from workers import tasks

    entry = settings.CELERY_BEAT_SCHEDULE["expire-queued-jobs"]
    assert entry["task"] == "workers.tasks.expire_jobs" == tasks.expire_jobs.name
    assert entry["schedule"] == settings.JOB_EXPIRE_INTERVAL
    assert settings.CELERY_TASK_ROUTES[entry["task"]] == settings.CELERY_TASK_ROUTES["workers.tasks.sweep"]
    assert tasks.expire_jobs() == 0
