"""Exception text never reaches clients: a failed job carries a fixed sentence, the log the rest.

The detection task runs in-process (Task.apply) with the stub detector and no broker.
"""

import logging
import traceback

import pytest

from detection.mtcnn import DetectorUnavailable
from jobs import services
from jobs.models import Image
from storage.s3 import StorageError
from tests.conftest import photo_bytes, upload
from workers.tasks import detect_faces

pytestmark = [pytest.mark.django_db]

SECRET = "postgres://admin:hunter2@db.internal:5432 /srv/app/secret.key"


@pytest.fixture
def job(api_client, s3, monkeypatch, stub_detector):
    """A queued job whose chain was not published (the tests run its task by hand)."""
    monkeypatch.setattr("jobs.services.submission.image_job_enqueue", lambda *, image_id: None)
    response = upload(api_client, photo_bytes("astronaut_1face.png"), request_id="errors", callback_url="http://127.0.0.1:9/hook")
    assert response.status_code == 202, response.content
    return Image.objects.get(id=response.json()["id"])


def run_task(job) -> None:
    result = detect_faces.apply(args=[str(job.id)])
    assert result.successful(), result.traceback


def assert_fixed_message(api_client, job, code: str) -> None:
    """The API and the callback body show the code and its fixed sentence, nothing of SECRET."""
    response = api_client.get(f"/api/v1/images/{job.id}/")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "failed"
    assert body["error"] == {"code": code, "message": services.JOB_ERROR_MESSAGES[code]}
    callback = services.image_job_callback_delivery(image_id=job.id)
    for text in (response.content.decode(), callback.body):
        for part in ("hunter2", "db.internal", "secret.key", "Traceback", "Error:"):
            assert part not in text, (part, text)


def assert_logged_with_traceback(caplog, job) -> None:
    """The operators get the job id, the exception and its traceback."""
    records = [r for r in caplog.records if str(job.id) in r.getMessage() and r.exc_info]
    assert records, [r.getMessage() for r in caplog.records]
    logged = "".join(traceback.format_exception(*records[0].exc_info))
    assert "hunter2" in logged and "Traceback" in logged


def test_an_unexpected_error_fails_the_job_with_a_fixed_message(job, api_client, monkeypatch, caplog):
    def boom(self, inputs):
        raise RuntimeError(f"could not reach {SECRET}")

    monkeypatch.setattr("detection.stub.StubDetector.predict", boom)
    with caplog.at_level(logging.INFO):
        run_task(job)
    job.refresh_from_db()
    assert job.error_code == "internal_error"
    assert_fixed_message(api_client, job, "internal_error")
    assert_logged_with_traceback(caplog, job)


def test_giving_up_on_a_dependency_fails_the_job_with_a_fixed_message(job, api_client, monkeypatch, caplog, settings):
    def unavailable(*, image_id, redelivered=False, attempt=None):
        raise StorageError(f"EndpointConnectionError: {SECRET}")

    settings.JOB_MAX_RETRIES = 0  # the first transient error is the last one allowed
    monkeypatch.setattr("jobs.services.image_job_detect", unavailable)
    with caplog.at_level(logging.INFO):
        run_task(job)
    job.refresh_from_db()
    assert job.error_code == "dependency_unavailable"
    assert_fixed_message(api_client, job, "dependency_unavailable")
    assert_logged_with_traceback(caplog, job)


def test_a_detector_that_cannot_run_fails_the_job_with_a_fixed_message(job, api_client, monkeypatch, caplog):
    def cannot_run(spec, *, device):
        raise DetectorUnavailable(f"DETECTOR_DEVICE=cuda but {SECRET}")

    monkeypatch.setattr("detection.engines.acquire", cannot_run)
    with caplog.at_level(logging.INFO):
        run_task(job)
    job.refresh_from_db()
    assert job.error_code == "detector_unavailable"
    assert_fixed_message(api_client, job, "detector_unavailable")
    assert_logged_with_traceback(caplog, job)


# --- The database going away: the message is handed back, never acknowledged with the job unmoved ---


def _down_for(calls: int, real):
    """``real``, after ``calls`` calls that raise OperationalError (the database is away)."""
    from django.db import OperationalError

    left = [calls]

    def wrapped(**kwargs):
        if left[0] > 0:
            left[0] -= 1
            raise OperationalError("connection to server at 127.0.0.1 failed: Connection refused")
        return real(**kwargs)

    return wrapped


def _requeue_needs_the_database_too(monkeypatch) -> None:
    from django.db import OperationalError

    def requeue(*, image_id):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr("jobs.services.image_job_requeue", requeue)


def test_a_database_error_at_the_start_is_retried_even_when_the_requeue_fails(job, monkeypatch):
    """The bug of issue 20: the requeue needs the database that is gone; the task retries anyway."""
    monkeypatch.setattr("jobs.services.detection.image_job_start", _down_for(2, services.image_job_start))
    _requeue_needs_the_database_too(monkeypatch)
    run_task(job)
    job.refresh_from_db()
    assert job.status == "completed" and job.attempts == 1


def test_a_retry_resumes_the_attempt_it_had_started(job, monkeypatch):
    """Started, then the database went away before completing and before the requeue: the job
    still says processing, and the retry (the same attempt) takes it over without counting a crash."""
    monkeypatch.setattr("jobs.services.detection.image_job_complete", _down_for(1, services.image_job_complete))
    _requeue_needs_the_database_too(monkeypatch)
    run_task(job)
    job.refresh_from_db()
    assert job.status == "completed" and job.attempts == 2 and job.face_count == 1


def test_a_plain_duplicate_still_skips_a_job_in_progress(job):
    """The retry's attempt number must be the job's current one: another copy is not a takeover."""
    started = services.image_job_start(image_id=job.id)
    assert services.image_job_start(image_id=job.id, attempt=started.attempts - 1) is None
    assert Image.objects.get(id=job.id).attempts == 1


def test_out_of_retries_with_the_database_still_away_the_message_is_dead_lettered(job, monkeypatch, settings):
    """Neither the detection nor the failure can be written: the message goes to the dead-letter
    queue; the sweeper records it once the database is back and marks the job for publishing."""
    from django.db import OperationalError

    from jobs.models import DeadLetter
    from tests.conftest import require
    from workers.tasks import dead_letters_drain

    require("rabbitmq")
    dead_letters_drain()  # whatever an earlier test left there
    settings.JOB_MAX_RETRIES = 0
    monkeypatch.setattr("jobs.services.image_job_detect", _down_for(1, services.image_job_detect))

    def fail(**kwargs):
        raise OperationalError("connection to server at 127.0.0.1 failed: Connection refused")

    monkeypatch.setattr("jobs.services.image_job_fail", fail)
    Image.objects.filter(id=job.id).update(enqueued_at=job.created_at)
    result = detect_faces.apply(args=[str(job.id)])
    assert result.state == "IGNORED"  # acknowledged, its chain stopped: the letter carries it
    assert Image.objects.get(id=job.id).status == "queued"

    assert dead_letters_drain() == 1
    letter = DeadLetter.objects.get()
    assert letter.task == "workers.tasks.detect_faces" and letter.args == [str(job.id)]
    assert letter.task_id == result.id and "OperationalError" in letter.error and letter.died_at is not None
    assert Image.objects.get(id=job.id).enqueued_at is None  # the sweeper publishes it after the grace


def test_the_delivery_step_retries_a_database_error_instead_of_losing_the_callback(job, monkeypatch, receiver):
    """Without its delivery row a finished job would never be called back: the step retries."""
    from callbacks.http import post_signed
    from callbacks.models import CallbackDelivery
    from callbacks.services import callback_deliveries_claim, callback_delivery_record
    from workers.tasks import deliver_result

    Image.objects.filter(id=job.id).update(callback_url=receiver.url())
    run_task(job)
    monkeypatch.setattr("jobs.services.image_job_callback_delivery", _down_for(2, services.image_job_callback_delivery))
    # The task hands the row to its process's sender (a thread, callbacks/sender.py); here the
    # hand-over is noted and the sender's turn is taken in this thread, with this test's database.
    handed = []
    monkeypatch.setattr("workers.tasks._attempt", handed.append)
    result = deliver_result.apply(args=[str(job.id)])
    assert result.successful(), result.traceback
    row = CallbackDelivery.objects.get(image_id=job.id)
    assert handed == [row.id]
    (claim,) = callback_deliveries_claim(limit=1, asked=[row.id])
    callback_delivery_record(claim=claim, result=post_signed(claim.url, claim.body, webhook_id=claim.webhook_id))
    assert CallbackDelivery.objects.get(id=row.id).status == "delivered"
    assert len(receiver.wait(1)) == 1


def test_beats_periodic_tasks_skip_a_tick_with_the_database_away(monkeypatch):
    """The sweeper and the guardrail evaluation: no crash, no retry; the next tick is theirs."""
    from workers.tasks import evaluate_rollouts, sweep

    def gone(**kwargs):
        from django.db import OperationalError

        raise OperationalError("could not connect to server")

    monkeypatch.setattr("workers.tasks.dead_letters_drain", lambda: 0)
    monkeypatch.setattr("jobs.services.image_jobs_sweep", gone)
    monkeypatch.setattr("rollouts.services.rollout_live", gone)
    assert sweep.apply().get() is None
    assert evaluate_rollouts.apply().get() is None
