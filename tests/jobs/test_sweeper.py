"""The periodic sweeper: no job stays queued or processing forever."""

import datetime as dt

import pytest
from django.utils import timezone

from jobs import services
from jobs.models import Image
from tests.conftest import photo_bytes, require, upload

pytestmark = [pytest.mark.django_db]


@pytest.fixture
def unpublished(api_client, s3, monkeypatch):
    """A job accepted while the broker was down: committed, never published."""
    require("rabbitmq")
    monkeypatch.setattr("jobs.services.submission._publish_chain", _broker_down)  # tests undo() it
    body = upload(api_client, photo_bytes("coffee.png"), request_id="stuck").json()
    return Image.objects.get(id=body["id"])


def _broker_down(*args, **kwargs):
    raise ConnectionRefusedError("broker down")


def _age(image: Image, **fields_seconds) -> None:
    Image.objects.filter(id=image.id).update(
        **{field: timezone.now() - dt.timedelta(seconds=seconds) for field, seconds in fields_seconds.items()}
    )


def test_a_job_accepted_while_the_broker_was_down_stays_queued_unpublished(unpublished):
    assert unpublished.status == "queued" and unpublished.enqueued_at is None and unpublished.enqueue_count == 0


def test_the_sweeper_publishes_it_after_the_grace(unpublished, monkeypatch, settings):
    """Within the grace nothing happens; after it, the chain is published and recorded."""
    monkeypatch.undo()
    assert services.image_jobs_sweep() == {"republished": 0, "failed": 0}
    _age(unpublished, created_at=settings.JOB_UNPUBLISHED_GRACE + 1)
    assert services.image_jobs_sweep() == {"republished": 1, "failed": 0}
    unpublished.refresh_from_db()
    assert unpublished.enqueue_count == 1 and unpublished.enqueued_at is not None


def test_a_job_queued_too_long_after_publishing_is_published_again(unpublished, monkeypatch, settings):
    monkeypatch.undo()
    Image.objects.filter(id=unpublished.id).update(enqueue_count=1)
    _age(unpublished, enqueued_at=settings.JOB_QUEUED_TIMEOUT + 1)
    assert services.image_jobs_sweep()["republished"] == 1


def test_a_job_processing_past_the_hard_limit_is_published_again(unpublished, monkeypatch, settings):
    monkeypatch.undo()
    Image.objects.filter(id=unpublished.id).update(status="processing", enqueue_count=1)
    _age(unpublished, started_at=settings.CELERY_TASK_TIME_LIMIT + 60, enqueued_at=10)
    assert services.image_jobs_sweep()["republished"] == 1


def test_a_job_republished_too_often_fails_as_stuck(unpublished, monkeypatch, settings):
    """Bounded: after JOB_MAX_ENQUEUES publications the job ends, failed with code stuck."""
    monkeypatch.undo()
    Image.objects.filter(id=unpublished.id).update(enqueue_count=settings.JOB_MAX_ENQUEUES)
    _age(unpublished, enqueued_at=settings.JOB_QUEUED_TIMEOUT + 1)
    assert services.image_jobs_sweep() == {"republished": 0, "failed": 1}
    unpublished.refresh_from_db()
    assert unpublished.status == "failed" and unpublished.error_code == "stuck"


def test_finished_and_fresh_jobs_are_left_alone(unpublished, monkeypatch):
    monkeypatch.undo()
    Image.objects.filter(id=unpublished.id).update(status="completed")
    _age(unpublished, created_at=10_000, enqueued_at=10_000)
    assert services.image_jobs_sweep() == {"republished": 0, "failed": 0}


def _second_job(api_client) -> Image:
    body = upload(api_client, photo_bytes("astronaut_1face.png"), request_id="after").json()
    return Image.objects.get(id=body["id"])


def test_a_queued_job_overtaken_by_a_later_one_is_published_again_soon(unpublished, api_client, monkeypatch, settings):
    """Queued JOB_QUEUED_STUCK after publishing while a job published after it has started: its
    message is gone, so it is published again long before JOB_QUEUED_TIMEOUT."""
    later = _second_job(api_client)
    monkeypatch.undo()
    Image.objects.filter(id=unpublished.id).update(enqueue_count=1)
    stuck = settings.JOB_QUEUED_STUCK
    _age(unpublished, enqueued_at=stuck + 2, created_at=stuck + 3, updated_at=stuck + 2)
    _age(later, enqueued_at=stuck + 1, created_at=stuck + 1)
    assert services.image_jobs_sweep()["republished"] == 0  # nothing has moved past it
    services.image_job_start(image_id=later.id)
    assert services.image_jobs_sweep()["republished"] == 1
    unpublished.refresh_from_db()
    assert unpublished.enqueue_count == 2


def test_a_queued_job_retried_recently_is_left_to_wait(unpublished, api_client, monkeypatch, settings):
    """Within JOB_QUEUED_STUCK of its last retry (waiting out its backoff) it is not published again."""
    later = _second_job(api_client)
    monkeypatch.undo()
    Image.objects.filter(id=unpublished.id).update(enqueue_count=1)
    stuck = settings.JOB_QUEUED_STUCK
    _age(unpublished, enqueued_at=stuck + 10, created_at=stuck + 10, updated_at=stuck + 10)
    _age(later, enqueued_at=stuck + 5, created_at=stuck + 5)
    services.image_job_start(image_id=later.id)
    services.image_job_requeue(image_id=unpublished.id)  # its retry, just now
    assert services.image_jobs_sweep()["republished"] == 0
    _age(unpublished, updated_at=stuck + 1)
    assert services.image_jobs_sweep()["republished"] == 1


def test_a_queued_job_published_after_every_started_one_is_left_to_wait(unpublished, api_client, monkeypatch, settings):
    """Nothing published after it has started: it is waiting its turn in a long queue."""
    later = _second_job(api_client)
    monkeypatch.undo()
    Image.objects.filter(id=unpublished.id).update(enqueue_count=1)
    stuck = settings.JOB_QUEUED_STUCK
    _age(later, enqueued_at=stuck + 20, created_at=stuck + 1)  # made later, published earlier
    _age(unpublished, enqueued_at=stuck + 10, created_at=stuck + 10, updated_at=stuck + 10)
    services.image_job_start(image_id=later.id)
    assert services.image_jobs_sweep()["republished"] == 0


def test_a_dead_lettered_job_is_published_by_the_next_sweep(unpublished, monkeypatch, settings):
    """A detect message recorded as a dead letter leaves its job unpublished: the sweeper takes it."""
    monkeypatch.undo()
    Image.objects.filter(id=unpublished.id).update(enqueue_count=1, enqueued_at=timezone.now())
    _age(unpublished, created_at=settings.JOB_UNPUBLISHED_GRACE + 1)
    services.dead_letter_record(task=services.DETECT_TASK, args=[str(unpublished.id)], error="OperationalError: gone")
    assert services.image_jobs_sweep()["republished"] == 1


def test_a_job_left_processing_by_the_attempt_that_gave_up_is_published_too(unpublished, monkeypatch, settings):
    """The dead letter names the attempt: still at it, the job goes back to queued, unpublished."""
    monkeypatch.undo()
    services.image_job_start(image_id=unpublished.id)
    _age(unpublished, created_at=settings.JOB_UNPUBLISHED_GRACE + 1)
    services.dead_letter_record(task=services.DETECT_TASK, args=[str(unpublished.id)], kwargs={"attempt": 0})
    assert Image.objects.get(id=unpublished.id).status == "processing"  # another attempt's: left alone
    services.dead_letter_record(task=services.DETECT_TASK, args=[str(unpublished.id)], kwargs={"attempt": 1})
    unpublished.refresh_from_db()
    assert unpublished.status == "queued" and unpublished.enqueued_at is None
    assert services.image_jobs_sweep()["republished"] == 1


def _as_batch_items(*images: Image) -> None:
    """Make jobs items of one batch: they then wait on the batch items' queue of their own."""
    from jobs.models import Batch

    batch = Batch.objects.create(client=images[0].client, item_count=len(images))
    Image.objects.filter(id__in=[image.id for image in images]).update(batch=batch)


def test_a_batch_item_is_not_taken_for_lost_when_a_later_upload_starts(unpublished, api_client, monkeypatch, settings):
    """Batch items wait on their own queue: an upload published after one and started at once
    says nothing of it (each queue is compared with itself), so it is left to wait; a later batch
    item that started does overtake it, and it is published again on the batch queue."""
    later = _second_job(api_client)
    monkeypatch.undo()
    published = []
    monkeypatch.setattr("jobs.services.submission._publish_chain", lambda image_id, **route: published.append((image_id, route)))
    _as_batch_items(unpublished)
    Image.objects.filter(id=unpublished.id).update(enqueue_count=1)
    stuck = settings.JOB_QUEUED_STUCK
    _age(unpublished, enqueued_at=stuck + 2, created_at=stuck + 3, updated_at=stuck + 2)
    _age(later, enqueued_at=stuck + 1, created_at=stuck + 1)
    services.image_job_start(image_id=later.id)
    assert services.image_jobs_sweep()["republished"] == 0
    _as_batch_items(later)  # now the started job is a later item of the batch queue
    assert services.image_jobs_sweep()["republished"] == 1
    queue = settings.CELERY_QUEUE_DETECT_BATCH
    assert published == [(unpublished.id, {"queue": queue, "exchange": queue, "routing_key": queue})]


def test_a_long_batch_waits_past_the_timeout_while_its_queue_moves(unpublished, api_client, monkeypatch, settings):
    """A batch item queued longer than JOB_QUEUED_TIMEOUT is not swept while batch items still
    start (a 10,000-item batch takes its time); once the batch queue stands still for
    JOB_QUEUED_STUCK, the timeout applies."""
    moving = _second_job(api_client)
    monkeypatch.undo()
    _as_batch_items(unpublished, moving)
    Image.objects.filter(id=unpublished.id).update(enqueue_count=1)
    _age(unpublished, enqueued_at=settings.JOB_QUEUED_TIMEOUT + 1)
    # Published before the waiting item, so it does not overtake it; started just now.
    _age(moving, enqueued_at=settings.JOB_QUEUED_TIMEOUT + 5)
    services.image_job_start(image_id=moving.id)
    assert services.image_jobs_sweep()["republished"] == 0
    _age(moving, started_at=settings.JOB_QUEUED_STUCK + 1)
    assert services.image_jobs_sweep()["republished"] == 1
