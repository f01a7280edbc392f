"""Batches: many photos by URL in one request (POST /api/v1/batches/). Each item is an ordinary
job (its own request_id, pinned version, rollout routing, metrics); the batch adds the whole-or-
nothing check, one transaction for every row, a queue of its own, a results stream and one
callback when its last item ends (docs/batches.md)."""

import contextvars
import datetime as dt
import logging
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Count, Exists, OuterRef
from django.utils import timezone

from callbacks.models import CallbackDelivery
from callbacks.services import callback_delivery_create, callback_delivery_enqueue
from clients.models import ApiClient
from core import metrics
from core.errors import Conflict, DomainError, NotFound
from core.logging import log_context_get
from registry.services import detector_version_for_job
from rollouts.models import Variant
from rollouts.services import rollout_route, shadow_sampled, shadow_variant

from ..models import Batch, Image, JobStatus, ShadowRun
from ..representation import batch_callback_representation
from .lifecycle import image_jobs_cancel, job_ended_listen
from .submission import _labels_asked, _labels_check, _publish_chain, detect_route

logger = logging.getLogger(__name__)

# Statuses of an item that has not ended (the partial index image_batch_open_idx covers them).
OPEN_STATUSES = (JobStatus.QUEUED, JobStatus.PROCESSING)
# Rows per INSERT and per publish round: 10,000 items stay a handful of statements.
BULK_SIZE = 1000


@dataclass(frozen=True)
class BatchItem:
    """One item as the API validated it: a photo by URL and the options of an upload."""

    request_id: str
    image_url: str
    model_version: str = ""
    labels: Sequence[str] = ()
    cohort: str = ""


@dataclass
class _Routing:
    """Versions and routes looked up once per batch, not once per item."""

    versions: dict[str, object] = field(default_factory=dict)
    routes: dict[str, object] = field(default_factory=dict)


def _item_error(index: int, exc: DomainError) -> DomainError:
    """The same refusal, naming the item's field (``items[3].model_version``)."""
    exc.field = f"items[{index}].{exc.field}" if exc.field else f"items[{index}]"
    return exc


def batch_create(
    *, client: ApiClient, items: Sequence[BatchItem], callback_url: str = "", expires_in: int | None = None
) -> tuple[Batch, bool]:
    """Accept a batch: every item is checked first and one bad item refuses the whole batch
    (nothing is created); then the batch and all its jobs are recorded in one transaction and
    published once it commits, on CELERY_QUEUE_DETECT_BATCH. Returns (batch, created).

    Items have no callback of their own: the batch's callback (``callback_url``) covers them.
    A request_id repeated within the batch, or one the client used before, is a 409 naming
    the item, unless every item is already the same item of one earlier batch: then that batch
    is the answer (created False), so a retried POST makes nothing twice."""
    if not items:
        raise DomainError("invalid", "A batch needs at least one item.", field="items")
    if len(items) > settings.BATCH_MAX_ITEMS:
        raise DomainError(
            "too_many_items", f"A batch may have at most {settings.BATCH_MAX_ITEMS} items; this one has {len(items)}.", field="items"
        )
    seen: dict[str, int] = {}
    for index, item in enumerate(items):
        if item.request_id in seen:
            raise Conflict(
                "request_id_conflict",
                f"items[{seen[item.request_id]}] and items[{index}] have the same request_id.",
                field=f"items[{index}].request_id",
            )
        seen[item.request_id] = index
    repeat = _earlier_batch(client, items)
    if repeat is not None:
        return repeat, False

    labels = []
    routing = _Routing()
    for index, item in enumerate(items):
        try:
            labels.append(_labels_asked(item.labels))
            if item.model_version and item.model_version not in routing.versions:
                routing.versions[item.model_version] = detector_version_for_job(requested=item.model_version)
        except DomainError as exc:
            raise _item_error(index, exc) from exc

    now = timezone.now()
    expires_at = now + dt.timedelta(seconds=expires_in) if expires_in else None
    http_request_id = log_context_get("http_request_id")
    try:
        with transaction.atomic():
            batch = Batch.objects.create(
                client=client, callback_url=callback_url, http_request_id=http_request_id, item_count=len(items), expires_at=expires_at
            )
            rows, shadows = [], []
            for index, item in enumerate(items):
                try:
                    version, route = _version_for(client, item, routing)
                    _labels_check(version, labels[index])
                except DomainError as exc:
                    raise _item_error(index, exc) from exc
                image = Image(
                    id=uuid.uuid4(),
                    client=client,
                    request_id=item.request_id,
                    http_request_id=http_request_id,
                    image_url=item.image_url,
                    batch=batch,
                    expires_at=expires_at,
                    # Filled in by the worker's fetch (jobs/fetch.py), as for any image_url job.
                    original_key="",
                    original_content_type="",
                    original_size=0,
                    original_sha256="",
                    detector_version=version,
                    model_version=version.label,
                    rollout=route.rollout if route else None,
                    variant=route.variant if route else "",
                    cohort=item.cohort,
                    labels=labels[index],
                )
                rows.append(image)
                if route is not None:
                    side = shadow_variant(route.rollout, route.variant)
                    if side is not None and shadow_sampled(route.rollout, image.id):
                        version_id = route.rollout.candidate_id if side == Variant.CANDIDATE else route.rollout.baseline_id
                        shadows.append(ShadowRun(job=image, rollout=route.rollout, detector_version_id=version_id, variant=side))
            Image.objects.bulk_create(rows, batch_size=BULK_SIZE)
            ShadowRun.objects.bulk_create(shadows, batch_size=BULK_SIZE)
            ids = [row.id for row in rows]
            # The workers must never see an id whose row is not committed.
            transaction.on_commit(lambda: batch_items_enqueue(image_ids=ids))
    except IntegrityError:
        # A request_id raced in from a concurrent request (or another batch) and won.
        repeat = _earlier_batch(client, items)
        if repeat is not None:
            return repeat, False
        raise
    return batch, True


def _earlier_batch(client: ApiClient, items: Sequence[BatchItem]) -> Batch | None:
    """The earlier batch these very items make up (a retried POST), or None when none of their
    request_ids is used; Conflict naming the first item whose request_id is used otherwise."""
    used: dict[str, tuple[uuid.UUID | None, str]] = {}
    request_ids = [item.request_id for item in items]
    for start in range(0, len(request_ids), BULK_SIZE):
        chunk = request_ids[start : start + BULK_SIZE]
        used.update(
            (rid, (batch_id, url))
            for rid, batch_id, url in Image.objects.filter(client=client, request_id__in=chunk).values_list(
                "request_id", "batch_id", "image_url"
            )
        )
    if not used:
        return None
    batch_ids = {batch_id for batch_id, _ in used.values()}
    if len(used) == len(items) and len(batch_ids) == 1 and None not in batch_ids:
        batch = Batch.objects.filter(id=batch_ids.pop(), client=client, item_count=len(items)).first()
        if batch is not None and all(used[item.request_id][1] == item.image_url for item in items):
            return batch
    index = next(n for n, item in enumerate(items) if item.request_id in used)
    raise Conflict(
        "request_id_conflict",
        f"items[{index}]: this request_id was already used for another job.",
        field=f"items[{index}].request_id",
    )


def _version_for(client: ApiClient, item: BatchItem, routing: _Routing):
    """(version, route) of one item, as image_job_create chooses them: the version asked for, or
    the live rollout's choice by cohort (looked up under the rollout's share lock, once per
    cohort), or the active version."""
    if item.model_version:
        return routing.versions[item.model_version], None
    if item.cohort not in routing.routes:
        routing.routes[item.cohort] = rollout_route(client_id=client.id, cohort=item.cohort, locked=True)
    route = routing.routes[item.cohort]
    if route is not None:
        return route.version, route
    if "" not in routing.versions:
        routing.versions[""] = detector_version_for_job(requested=None)
    return routing.versions[""], None


def batch_items_enqueue(*, image_ids: Sequence[uuid.UUID]) -> int:
    """Publish the detect -> deliver chain of each committed item on the batch queue and record
    it. A broker outage stops the round, logged: the items left stay queued, unpublished, for the
    sweeper to publish (on the detect queue). Returns how many were published."""
    published = 0
    for start in range(0, len(image_ids), BULK_SIZE):
        chunk = image_ids[start : start + BULK_SIZE]
        done = []
        try:
            for image_id in chunk:
                # The message a single upload's job gets (the leaner publish), on the batch queue.
                _publish_chain(image_id, **detect_route(batch=True))
                done.append(image_id)
        except Exception:
            logger.exception("could not enqueue %d batch items; the sweeper will retry", len(image_ids) - published - len(done))
            _published(done)
            return published + len(done)
        _published(done)
        published += len(done)
    return published


def _published(image_ids: list[uuid.UUID]) -> None:
    if image_ids:
        now = timezone.now()
        Image.objects.filter(id__in=image_ids).update(enqueued_at=now, enqueue_count=1, updated_at=now)


# --- Reads -------------------------------------------------------------------------------------


def batch_get(*, client: ApiClient, batch_id: str) -> Batch:
    """The client's batch with that id; NotFound if there is none, it is no uuid, or it is
    another client's (which must not be told apart from a missing one)."""
    try:
        pk = uuid.UUID(str(batch_id))
    except ValueError:
        pk = None
    batch = Batch.objects.filter(pk=pk, client=client).first() if pk else None
    if batch is None:
        raise NotFound("not_found", "No batch with that id.")
    return batch


def batch_counts(*, batch_id: uuid.UUID) -> dict[str, int]:
    """How many of its items are in each status (statuses with none left out)."""
    rows = Image.objects.filter(batch_id=batch_id).order_by().values_list("status").annotate(n=Count("id"))
    return {status: n for status, n in rows}


def batch_items(*, batch_id: uuid.UUID):
    """Its items, in the order they were made (the results stream and the item pages)."""
    return Image.objects.filter(batch_id=batch_id).order_by("created_at", "id")


def batch_results(*, batch_id: uuid.UUID, chunk_size: int = 500) -> Iterator[Image]:
    """Every item with its detections, read chunk by chunk: memory stays the same for 10 or
    10,000 items."""
    return batch_items(batch_id=batch_id).prefetch_related("faces").iterator(chunk_size=chunk_size)


# --- The end of a batch ------------------------------------------------------------------------


def batch_item_ended(*, batch_id: uuid.UUID | None) -> CallbackDelivery | None:
    """Called for every item that reached a terminal status (the lifecycle hook job_ended). If it
    was the batch's last open item, end the batch and record its callback. Runs once the
    transition commits: two items ending at once each see the other's end once both committed,
    and the conditional UPDATE lets exactly one of them end the batch."""
    if batch_id is None:
        return None
    if transaction.get_connection().in_atomic_block:
        transaction.on_commit(lambda: batch_finish(batch_id=batch_id), robust=True)
        return None
    return batch_finish(batch_id=batch_id)


# Batches whose items this thread is canceling in bulk (batch_cancel): their items' ends are
# not looked at one by one, batch_cancel looks once after.
_canceling: contextvars.ContextVar[frozenset] = contextvars.ContextVar("batches_canceling", default=frozenset())


def batch_job_ended(image: Image) -> None:
    """The lifecycle's job_ended listener (called once the item's terminal transition committed)."""
    if image.batch_id is not None and image.batch_id not in _canceling.get():
        batch_item_ended(batch_id=image.batch_id)


job_ended_listen(batch_job_ended)


def batch_finish(*, batch_id: uuid.UUID) -> CallbackDelivery | None:
    """End the batch if none of its items is open: ``finished_at`` is set by one conditional
    UPDATE (WHERE finished_at IS NULL AND no open item), so however many callers race, one
    wins; the winner records the batch callback in the same transaction. Returns the delivery
    made (None: not over yet, ended already, or no callback_url)."""
    with transaction.atomic():
        open_items = Image.objects.filter(batch_id=OuterRef("pk"), status__in=OPEN_STATUSES)
        now = timezone.now()
        ended = Batch.objects.filter(id=batch_id, finished_at__isnull=True).filter(~Exists(open_items)).update(finished_at=now)
        if not ended:
            return None
        batch = Batch.objects.get(id=batch_id)
        outbox_row = None
        if batch.callback_url:
            counts = batch_counts(batch_id=batch.id)
            outbox_row = callback_delivery_create(
                batch_id=batch.id, url=batch.callback_url, render=lambda delivery: batch_callback_representation(batch, counts=counts)
            )
            callback_delivery_enqueue(delivery_id=outbox_row.id, robust=True)
    metrics.batch_finished(status=batch.status)
    logger.info("batch %s ended (%s, %d items)", batch.id, batch.status, batch.item_count)
    return outbox_row


def batches_finish_sweep(*, limit: int = 100) -> int:
    """End the batches whose items all ended but that were not ended (the process that ended
    the last item died between its commit and batch_finish). Beat calls this with the sweeper.
    Returns how many were ended."""
    open_items = Image.objects.filter(batch_id=OuterRef("pk"), status__in=OPEN_STATUSES)
    stale = list(
        Batch.objects.filter(finished_at__isnull=True, created_at__lt=timezone.now() - dt.timedelta(seconds=30))
        .filter(~Exists(open_items))
        .values_list("id", flat=True)[:limit]
    )
    for batch_id in stale:
        batch_finish(batch_id=batch_id)
    if stale:
        logger.warning("sweeper: ended %d batches whose last item had ended without ending them", len(stale))
    return len(stale)


def batch_cancel(*, client: ApiClient, batch_id: str) -> Batch:
    """Cancel the client's batch: its queued items end canceled; items already being detected
    finish. The batch ends (and calls back) once every item has ended. Canceling a canceled
    batch again answers the same; a batch that ended otherwise is a Conflict batch_finished."""
    batch = batch_get(client=client, batch_id=batch_id)
    if batch.finished_at is not None and batch.canceled_at is None:
        raise Conflict("batch_finished", "The batch has ended; there is nothing to cancel.")
    if batch.canceled_at is None:
        # Only while it has not ended: its last item may end between the read above and here,
        # and a batch called back `completed` must not read `canceled` after.
        marked = Batch.objects.filter(id=batch.id, canceled_at__isnull=True, finished_at__isnull=True).update(canceled_at=timezone.now())
        if not marked and Batch.objects.filter(id=batch.id, canceled_at__isnull=True).exists():
            raise Conflict("batch_finished", "The batch has ended; there is nothing to cancel.")
    token = _canceling.set(_canceling.get() | {batch.id})
    try:
        image_jobs_cancel(queryset=Image.objects.filter(batch_id=batch.id, status=JobStatus.QUEUED))
    finally:
        _canceling.reset(token)
    batch_finish(batch_id=batch.id)
    batch.refresh_from_db()
    return batch
