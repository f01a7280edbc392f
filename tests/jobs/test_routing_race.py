"""An upload accepted at the very moment of a rollback: the routing read and the rollback agree.
No job is routed to the candidate by a rollout that a committed rollback has ended, whichever
comes first. Each side runs on a thread of its own, with its own PostgreSQL connection and
transactions, at the point where the race is decided."""

import io
import threading
import time

import pytest
from django.db import close_old_connections, connection

from clients.models import ApiClient
from jobs.models import Image
from jobs.services import submission as services  # the submission stage: image_job_create and what it calls
from rollouts.models import Rollout, RolloutStatus
from rollouts.services import rollout_rollback, rollout_start
from tests.conftest import photo_bytes, require

pytestmark = [pytest.mark.django_db(transaction=True)]

BASELINE, CANDIDATE = "mtcnn@1.0.0", "mtcnn@1.1.0"
WAIT = 60  # seconds: a deadline for what must happen, never a pause


@pytest.fixture(autouse=True)
def _setup(monkeypatch, s3):
    require("postgres")  # the row lock is PostgreSQL's
    # Accepted and stored, never published: what is under test is where the job is routed.
    monkeypatch.setattr("jobs.services.submission.image_job_enqueue", lambda *, image_id: None)


def everyone_on_the_candidate() -> Rollout:
    """A canary at 100 %: without the rollback, every upload goes to the candidate."""
    return rollout_start(candidate=CANDIDATE, mode="canary", actor="test", stages=[{"weight": 100, "min_seconds": 0, "min_jobs": 0}])


class Step(threading.Thread):
    """``work`` on a thread of its own (its own database connection, closed at the end)."""

    def __init__(self, work) -> None:
        super().__init__(daemon=True)
        self.work, self.result, self.error = work, None, None

    def run(self) -> None:
        try:
            self.result = self.work()
        except BaseException as exc:  # handed to the test, which re-raises it
            self.error = exc
        finally:
            close_old_connections()
            connection.close()

    def outcome(self):
        self.join(WAIT)
        assert not self.is_alive(), "the thread did not finish"
        if self.error is not None:
            raise self.error
        return self.result


def held_at(monkeypatch, target: str) -> tuple[threading.Event, threading.Event]:
    """Stop the upload at ``target`` (a jobs.services.submission name) until ``go``; ``reached`` when it is there."""
    reached, go = threading.Event(), threading.Event()
    original = getattr(services, target)

    def held(*args, **kwargs):
        reached.set()
        assert go.wait(WAIT), "never released"
        return original(*args, **kwargs)

    monkeypatch.setattr(services, target, held)
    return reached, go


def upload(request_id: str):
    client, _ = ApiClient.objects.get_or_create(name="race")
    data = photo_bytes("coffee.png")
    return lambda: services.image_job_create(client=client, upload=io.BytesIO(data), size=len(data), request_id=request_id)[0].id


def waiting_on_a_lock() -> int:
    """Backends of this database waiting for a row lock now."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'")
        return cursor.fetchone()[0]


def test_an_upload_routed_before_a_rollback_commits_after_it_goes_to_the_baseline(monkeypatch):
    """The upload read the rollout at 100 %, the rollback committed while it stored the photo: its job
    is the baseline's, outside the rollout."""
    rollout = everyone_on_the_candidate()
    # Held while storing the photo: after the first routing read, before the job's transaction.
    reached, go = threading.Event(), threading.Event()
    monkeypatch.setattr(services, "storage", _HeldStorage(services.storage, reached, go))
    uploading = Step(upload("during-the-rollback"))
    uploading.start()
    assert reached.wait(WAIT), "the upload never reached the store"
    rollout_rollback(rollout_id=rollout.id, actor="test", reason="race")  # committed here
    go.set()
    job = Image.objects.get(id=uploading.outcome())
    assert (job.detector_version_id, job.rollout_id, job.variant) == (BASELINE, None, "")
    assert not Image.objects.filter(rollout=rollout, variant="candidate").exists()


def test_a_rollback_waits_for_an_upload_that_holds_the_routing_lock(monkeypatch):
    """An upload inside its transaction holds the rollout row: the rollback waits, and ends after the job was recorded."""
    rollout = everyone_on_the_candidate()
    reached, go = held_at(monkeypatch, "_shadow_run_create")  # after the locked read and the job's row, before the commit
    uploading = Step(upload("before-the-rollback"))
    uploading.start()
    assert reached.wait(WAIT), "the upload never reached its transaction"
    before = waiting_on_a_lock()
    rolling_back = Step(lambda: rollout_rollback(rollout_id=rollout.id, actor="test", reason="race").ended_at)
    rolling_back.start()
    deadline = time.monotonic() + WAIT
    while waiting_on_a_lock() <= before:
        assert rolling_back.is_alive(), "the rollback did not wait for the upload's transaction"
        assert time.monotonic() < deadline, "the rollback never waited on the rollout's row"
        time.sleep(0.02)
    go.set()
    job = Image.objects.get(id=uploading.outcome())
    ended_at = rolling_back.outcome()
    assert (job.detector_version_id, job.rollout_id, job.variant) == (CANDIDATE, rollout.id, "candidate")
    assert Rollout.objects.get(id=rollout.id).status == RolloutStatus.ROLLED_BACK
    assert job.created_at < ended_at  # recorded before the rollback, which waited for it


def test_uploads_do_not_wait_for_each_other(monkeypatch):
    """The routing lock is shared: a second upload completes while the first holds it."""
    everyone_on_the_candidate()
    reached, go = held_at(monkeypatch, "_shadow_run_create")
    first = Step(upload("first"))
    first.start()
    assert reached.wait(WAIT)
    monkeypatch.undo()  # the second upload is not held
    monkeypatch.setattr("jobs.services.submission.image_job_enqueue", lambda *, image_id: None)
    second = Step(upload("second"))
    second.start()
    second_id = second.outcome()  # finishes while the first still holds its share of the lock
    assert first.is_alive()
    go.set()
    first_id = first.outcome()
    assert {job.variant for job in Image.objects.filter(id__in=[first_id, second_id])} == {"candidate"}


class _HeldStorage:
    """jobs.services' storage module with storage_put held until ``go`` (the photo being stored)."""

    def __init__(self, real, reached: threading.Event, go: threading.Event) -> None:
        self._real, self._reached, self._go = real, reached, go

    def __getattr__(self, name):
        return getattr(self._real, name)

    def storage_put(self, **kwargs):
        self._reached.set()
        assert self._go.wait(WAIT), "never released"
        return self._real.storage_put(**kwargs)
