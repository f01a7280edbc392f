"""A batch ends exactly once, when its last item ends, with one callback through the outbox:
however many items end at the same moment."""

import json

import pytest
from django.db import transaction
from django.utils import timezone

from callbacks.models import CallbackDelivery, DeliveryKind
from clients.services import api_key_create
from core import metrics
from jobs.models import Batch, Image, JobStatus
from jobs.services import batches
from tests.conftest import at_once

pytestmark = [pytest.mark.django_db(transaction=True)]


def make_batch(n: int, *, callback_url: str = "http://127.0.0.1:9/hook", monkeypatch) -> Batch:
    monkeypatch.setattr(batches, "batch_items_enqueue", lambda *, image_ids: None)
    monkeypatch.setattr(batches, "callback_delivery_enqueue", lambda *, delivery_id, robust=False: None)
    client = api_key_create(client_name=f"batch-{timezone.now().timestamp()}")[0].client
    items = [batches.BatchItem(request_id=f"r{i}", image_url=f"https://example.com/{i}.jpg") for i in range(n)]
    batch, created = batches.batch_create(client=client, items=items, callback_url=callback_url)
    assert created
    return batch


def end_item(image_id, status=JobStatus.COMPLETED) -> None:
    """A terminal transition as the lifecycle makes one: in a transaction, then the hook."""
    with transaction.atomic():
        image = Image.objects.select_for_update().get(id=image_id)
        Image.objects.filter(id=image.id).update(status=status, finished_at=timezone.now())
        batches.batch_item_ended(batch_id=image.batch_id)


def batch_deliveries(batch: Batch) -> list[CallbackDelivery]:
    return list(CallbackDelivery.objects.filter(batch=batch))


def test_the_last_item_ending_ends_the_batch_with_one_signed_body(monkeypatch):
    batch = make_batch(3, monkeypatch=monkeypatch)
    ids = list(Image.objects.filter(batch=batch).values_list("id", flat=True))
    end_item(ids[0])
    end_item(ids[1], JobStatus.FAILED)
    batch.refresh_from_db()
    assert batch.finished_at is None and batch_deliveries(batch) == []
    end_item(ids[2], JobStatus.CANCELED)
    batch.refresh_from_db()
    assert batch.finished_at is not None and batch.status == "completed"
    [delivery] = batch_deliveries(batch)
    assert delivery.kind == DeliveryKind.BATCH and delivery.image_id is None and delivery.url == "http://127.0.0.1:9/hook"
    body = json.loads(delivery.body)
    assert body == {
        "type": "batch.completed",
        "batch_id": str(batch.id),
        "status": "completed",
        "item_count": 3,
        "counts": {"completed": 1, "failed": 1, "canceled": 1},
        "results_url": f"http://testserver/api/v1/batches/{batch.id}/results/",
        "finished_at": body["finished_at"],
    }
    # Asked again (a redelivered task, the sweeper): nothing more.
    assert batches.batch_finish(batch_id=batch.id) is None
    assert len(batch_deliveries(batch)) == 1


def test_items_ending_at_the_same_moment_send_one_callback(monkeypatch):
    """Every item ends on its own thread, all released together: exactly one ends the batch."""
    n = 8
    batch = make_batch(n, monkeypatch=monkeypatch)
    ids = list(Image.objects.filter(batch=batch).values_list("id", flat=True))
    finished = []
    monkeypatch.setattr(metrics, "batch_finished", lambda *, status: finished.append(status))
    _, errors = at_once(end_item, [(image_id,) for image_id in ids])
    assert errors == []
    batch.refresh_from_db()
    assert batch.finished_at is not None
    assert len(batch_deliveries(batch)) == 1 and finished == ["completed"]
    assert json.loads(batch_deliveries(batch)[0].body)["counts"] == {"completed": n}


def test_two_finishers_racing_on_the_last_item_make_one_callback(monkeypatch):
    """batch_finish called on many threads once every item has ended: one wins the UPDATE."""
    batch = make_batch(2, monkeypatch=monkeypatch)
    Image.objects.filter(batch=batch).update(status=JobStatus.COMPLETED)
    made, errors = at_once(lambda: batches.batch_finish(batch_id=batch.id), [()] * 6)
    assert errors == []
    assert len([d for d in made if d is not None]) == 1 and len(batch_deliveries(batch)) == 1


def test_a_batch_without_callback_url_ends_without_delivery(monkeypatch):
    batch = make_batch(1, callback_url="", monkeypatch=monkeypatch)
    end_item(Image.objects.get(batch=batch).id)
    batch.refresh_from_db()
    assert batch.finished_at is not None and batch_deliveries(batch) == []


def test_the_sweeper_ends_a_batch_whose_end_was_lost(monkeypatch):
    """The process that ended the last item died before ending the batch: the sweep does it."""
    batch = make_batch(2, monkeypatch=monkeypatch)
    Image.objects.filter(batch=batch).update(status=JobStatus.COMPLETED)
    Batch.objects.filter(id=batch.id).update(created_at=timezone.now() - timezone.timedelta(minutes=5))
    assert batches.batches_finish_sweep() == 1
    assert batches.batches_finish_sweep() == 0
    assert len(batch_deliveries(batch)) == 1


def test_items_are_published_on_the_batch_queue(monkeypatch, settings):
    """Each item's detect task goes to CELERY_QUEUE_DETECT_BATCH (its exchange and key too), its
    delivery (the chain's next task) to the deliver queue; the items are recorded as published."""
    sent = []
    monkeypatch.setattr("celery.app.base.Celery.send_task", lambda self, name, args=None, **options: sent.append((name, args, options)))
    monkeypatch.setattr(batches, "callback_delivery_enqueue", lambda *, delivery_id, robust=False: None)
    client = api_key_create(client_name="queue")[0].client
    items = [batches.BatchItem(request_id=f"q{i}", image_url=f"https://example.com/{i}.jpg") for i in range(3)]
    batch, _ = batches.batch_create(client=client, items=items)
    assert len(sent) == 3
    ids = {str(job.id) for job in Image.objects.filter(batch=batch)}
    assert {args[0] for _, args, _ in sent} == ids
    for name, args, options in sent:
        assert name == "workers.tasks.detect_faces"
        assert options["queue"] == options["exchange"] == options["routing_key"] == settings.CELERY_QUEUE_DETECT_BATCH
        (deliver,) = options["chain"]
        assert deliver["task"] == "workers.tasks.deliver_result" and deliver["args"] == list(args)
        assert "queue" not in deliver["options"]
    assert all(job.enqueued_at is not None and job.enqueue_count == 1 for job in Image.objects.filter(batch=batch))


def test_cancel_ends_queued_items_and_the_batch_ends_canceled_once_the_rest_end(monkeypatch):
    """Queued items end canceled at once; one being detected finishes; then the batch ends
    canceled, with one callback that says so."""
    batch = make_batch(3, monkeypatch=monkeypatch)
    busy = Image.objects.filter(batch=batch).order_by("created_at", "id").first()
    Image.objects.filter(id=busy.id).update(status=JobStatus.PROCESSING)
    batches.batch_cancel(client=batch.client, batch_id=str(batch.id))
    batch.refresh_from_db()
    assert batch.canceled_at is not None and batch.finished_at is None and batch.status == "running"
    assert batches.batch_counts(batch_id=batch.id) == {"canceled": 2, "processing": 1}
    assert batch_deliveries(batch) == []
    # Canceling again answers the same and changes nothing.
    assert batches.batch_cancel(client=batch.client, batch_id=str(batch.id)).canceled_at == batch.canceled_at
    end_item(busy.id)
    batch.refresh_from_db()
    assert batch.status == "canceled"
    [delivery] = batch_deliveries(batch)
    body = json.loads(delivery.body)
    assert body["status"] == "canceled" and body["counts"] == {"canceled": 2, "completed": 1}


def test_canceling_a_batch_of_queued_items_ends_it_at_once(monkeypatch):
    batch = make_batch(4, monkeypatch=monkeypatch)
    batches.batch_cancel(client=batch.client, batch_id=str(batch.id))
    batch.refresh_from_db()
    assert batch.status == "canceled" and len(batch_deliveries(batch)) == 1


def test_a_batch_that_ended_by_itself_cannot_be_canceled(monkeypatch):
    from core.errors import Conflict, NotFound

    batch = make_batch(1, monkeypatch=monkeypatch)
    end_item(Image.objects.get(batch=batch).id)
    with pytest.raises(Conflict) as refused:
        batches.batch_cancel(client=batch.client, batch_id=str(batch.id))
    assert refused.value.code == "batch_finished"
    other = api_key_create(client_name="someone-else")[0].client
    with pytest.raises(NotFound):
        batches.batch_cancel(client=other, batch_id=str(batch.id))


def test_the_lifecycle_hook_ends_the_batch(monkeypatch):
    """A real terminal transition (image_job_fail) reaches the batch through job_ended."""
    from jobs.services import image_job_fail

    batch = make_batch(2, monkeypatch=monkeypatch)
    for image_id in Image.objects.filter(batch=batch).values_list("id", flat=True):
        assert image_job_fail(image_id=image_id, code="image_fetch_failed", message="no")
    batch.refresh_from_db()
    assert batch.status == "completed" and json.loads(batch_deliveries(batch)[0].body)["counts"] == {"failed": 2}


def test_canceling_a_batch_looks_at_its_end_once_not_per_item(monkeypatch):
    """A bulk cancel ends many items at once; the batch is looked at once after, not once per item."""
    batch = make_batch(6, monkeypatch=monkeypatch)
    calls = []
    real = batches.batch_finish
    monkeypatch.setattr(batches, "batch_finish", lambda *, batch_id: (calls.append(batch_id), real(batch_id=batch_id))[1])
    batches.batch_cancel(client=batch.client, batch_id=str(batch.id))
    assert calls == [batch.id] and len(batch_deliveries(batch)) == 1


def test_items_expired_end_the_batch(monkeypatch):
    """Items not started by the batch's expires_at end expired (the beat's sweep), and the batch with them."""
    from jobs.services.lifecycle import image_jobs_expire_sweep

    batch = make_batch(3, monkeypatch=monkeypatch)
    Image.objects.filter(batch=batch).update(expires_at=timezone.now() - timezone.timedelta(seconds=1))
    assert image_jobs_expire_sweep() == 3
    batch.refresh_from_db()
    assert batch.status == "completed"
    assert json.loads(batch_deliveries(batch)[0].body)["counts"] == {"expired": 3}
