"""After detection: the annotated image, the callback delivery, redelivery; and the sweeper that
pushes on stuck jobs, with the dead letters it hands back."""

import datetime as dt
import logging
import uuid
from collections.abc import Sequence

from celery import signature
from django.conf import settings
from django.db import (
    transaction,
)
from django.db.models import Max, Q, prefetch_related_objects
from django.utils import timezone

from callbacks.models import CallbackDelivery
from callbacks.services import Claim, callback_delivery_create, callback_delivery_create_claimed, callback_delivery_enqueue
from core.errors import Conflict
from detection.annotate import annotate_jpeg

# The label rule; api/serializers.py reads it from here (api does not import detection).
from storage import s3 as storage

from ..imaging import image_decode_rgb
from ..keys import annotated_object_key
from ..models import (
    TERMINAL_STATUSES,
    DeadLetter,
    Image,
    JobStatus,
    ShadowRun,
    ShadowStatus,
)
from ..representation import image_representation
from ..selectors import JOB_PREFETCH
from .detection import image_job_fail
from .shadow import SHADOW_DETECT_TASK, image_job_shadows_enqueue
from .submission import (
    DELIVER_RESULT_TASK,
    DETECT_TASK,
    _delete_quietly,
    image_job_enqueue,
)

logger = logging.getLogger(__name__)


# --- Result: annotation and callback ------------------------------------------------------------


def image_job_annotate(*, image_id: uuid.UUID) -> None:
    """Draw the faces of a completed job on a copy of its photo and store it as JPEG. Does
    nothing for a job that is not completed or is already annotated; the key is fixed per job,
    so a repeat overwrites the same object."""
    image = Image.objects.get(id=image_id)
    if image.status != JobStatus.COMPLETED or image.annotated_key:
        return
    rgb = image_decode_rgb(storage.storage_get(key=image.original_key))
    jpeg = annotate_jpeg(rgb, list(image.faces.all()))
    key = annotated_object_key(image)
    storage.storage_put(key=key, data=jpeg, length=len(jpeg), content_type="image/jpeg")
    recorded = Image.objects.filter(id=image_id, status=JobStatus.COMPLETED, annotated_key="").update(
        annotated_key=key, updated_at=timezone.now()
    )
    if not recorded and Image.objects.filter(id=image_id, status=JobStatus.DELETED).exists():
        # Erased while this was drawn (jobs/erasure.py): the image must not outlive the job.
        _delete_quietly(key)


def image_job_callback_delivery(*, image_id: uuid.UUID) -> CallbackDelivery | None:
    """The job's automatic callback delivery, made once when its result is ready (None: the job
    has no callback_url or is not finished)."""
    return image_job_callback_delivery_claimed(image_id=image_id, claim=False)[0]


def image_job_callback_delivery_claimed(*, image_id: uuid.UUID, claim: bool = True) -> tuple[CallbackDelivery | None, Claim | None]:
    """image_job_callback_delivery, and with ``claim`` the lease of the first try of a delivery
    made now (callbacks.services.callback_delivery_create_claimed: the caller sends it at once;
    None when it is not made now or its receiver must wait its turn)."""
    with transaction.atomic():
        return _callback_delivery_claimed(Image.objects.select_for_update().get(id=image_id), claim=claim)


def image_job_callback_handoff(*, image_id: uuid.UUID) -> tuple[bool, Claim | None]:
    """For the detect task that finished the job, holding a free thread of its process's sender
    (DETECT_SENDS_CALLBACKS): the job's delivery made with its first try's lease, as the
    delivery task would make it. Returns (done, claim): ``done`` when nothing is left for the
    delivery task (nothing to call back, or ``claim`` is the caller's to send). Not done: the job
    is completed without its annotated image (the delivery task draws it first), its delivery
    existed already, or its receiver must wait its turn; the delivery task then does as before."""
    with transaction.atomic():
        image = Image.objects.select_for_update().get(id=image_id)
        if image.status == JobStatus.COMPLETED and not image.annotated_key:
            return False, None
        outbox_row, claim = _callback_delivery_claimed(image, claim=True)
        return outbox_row is None or claim is not None, claim


def _callback_delivery_claimed(image: Image, *, claim: bool) -> tuple[CallbackDelivery | None, Claim | None]:
    # ``image``: locked by the caller's transaction.
    # An erased job calls back nothing: its pending deliveries were cancelled (docs/security.md).
    if not image.callback_url or image.status not in TERMINAL_STATUSES or image.status == JobStatus.DELETED:
        return None, None
    # The locked row is the one rendered: its detections and deliveries read once, here.
    prefetch_related_objects([image], *JOB_PREFETCH)
    existing = min(image.deliveries.all(), key=lambda d: (d.created_at, d.id), default=None)
    if existing is not None:
        return existing, None
    return callback_delivery_create_claimed(
        image_id=image.id,
        url=image.callback_url,
        render=lambda delivery: image_representation(image, delivery=delivery),
        claim=claim,
    )


def image_job_redeliver(*, image_id: uuid.UUID) -> CallbackDelivery:
    """A fresh delivery (new webhook id, current representation) of a finished job's result,
    tried on a worker once committed."""
    image = Image.objects.get(id=image_id)
    if image.status == JobStatus.DELETED:
        raise Conflict("deleted", "This job was erased; there is nothing to deliver.")
    if not image.callback_url:
        raise Conflict("no_callback_url", "This job has no callback_url to deliver to.")
    if image.status not in TERMINAL_STATUSES:
        raise Conflict("not_finished", "The job is not finished; its callback will be sent then.")
    delivery = _callback_delivery_create(image_id=image_id)
    callback_delivery_enqueue(delivery_id=delivery.id)
    return delivery


def _callback_delivery_create(*, image_id: uuid.UUID) -> CallbackDelivery:
    image = Image.objects.prefetch_related(*JOB_PREFETCH).get(id=image_id)
    return callback_delivery_create(
        image_id=image.id, url=image.callback_url, render=lambda delivery: image_representation(image, delivery=delivery)
    )


def image_job_requeue(*, image_id: uuid.UUID) -> None:
    """Put a processing job back to queued before a retry, so that the next start is not taken
    for the redelivery of a crashed attempt. Touches updated_at even for a job still queued: the
    sweeper leaves a job alone JOB_QUEUED_STUCK after its last retry (a retry waits out its
    backoff outside the queue)."""
    Image.objects.filter(id=image_id, status__in=(JobStatus.PROCESSING, JobStatus.QUEUED)).update(
        status=JobStatus.QUEUED, updated_at=timezone.now()
    )


def image_jobs_sweep() -> dict[str, int]:
    """Find jobs that would otherwise never finish and push them on (Celery beat calls this).

    - queued and never published (the broker was down at submit, or its message went to the
      dead-letter queue: dead_letter_record), after JOB_UNPUBLISHED_GRACE;
    - queued JOB_QUEUED_STUCK after publishing (and after its last retry) while a job published
      after it to the same queue has already started: the queue, first in first out, moved past
      it, so its message is gone (a task that acked it unmoved). Batch items wait on a queue of
      their own, so each queue is compared with itself: an upload that starts at once says
      nothing of the batch items published before it;
    - queued long after publishing (the message was lost and nothing else moves), after
      JOB_QUEUED_TIMEOUT, the last resort; for a batch item only while the batch queue has not
      moved for JOB_QUEUED_STUCK (a 10,000-item batch legitimately waits longer than that);
    - processing past the hard time limit (the worker vanished and the message with it).
    Each is re-published (a batch item on its own queue), at most JOB_MAX_ENQUEUES times in all;
    then it fails with "stuck". A copy of a job that is in fact still waiting costs nothing but a
    message: the worker that takes the second copy finds the job started, or finished, and skips it.
    """
    now = timezone.now()
    quiet_since = now - dt.timedelta(seconds=settings.JOB_QUEUED_STUCK)
    timed_out = Q(status=JobStatus.QUEUED, enqueued_at__lt=now - dt.timedelta(seconds=settings.JOB_QUEUED_TIMEOUT))
    stuck = (
        Q(status=JobStatus.QUEUED, enqueued_at__isnull=True, created_at__lt=now - dt.timedelta(seconds=settings.JOB_UNPUBLISHED_GRACE))
        | Q(status=JobStatus.PROCESSING, started_at__lt=now - dt.timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT + 30))
        | (timed_out & Q(batch__isnull=True))
    )
    for batch in (False, True):
        overtaken_before, last_start = _latest_started_publish(now, batch=batch)
        kind = Q(batch__isnull=not batch)
        if overtaken_before is not None:
            stuck |= kind & Q(
                status=JobStatus.QUEUED,
                enqueued_at__lt=min(overtaken_before, quiet_since),
                updated_at__lt=quiet_since,
            )
        if batch and (last_start is None or last_start < quiet_since):
            stuck |= kind & timed_out
    counts = {"republished": 0, "failed": 0}
    rows = Image.objects.filter(stuck).values_list("id", "enqueue_count", "batch_id")[:500]
    for image_id, enqueue_count, batch_id in rows:
        if enqueue_count >= settings.JOB_MAX_ENQUEUES:
            if image_job_fail(image_id=image_id, code="stuck", message=f"Published {enqueue_count} times without finishing."):
                counts["failed"] += 1
                # Its detection task will not run again to publish them.
                image_job_shadows_enqueue(image_id=image_id)
        elif image_job_enqueue(image_id=image_id, batch=batch_id is not None):
            counts["republished"] += 1
    if any(counts.values()):
        logger.warning("sweeper: %s", counts)
    return counts


def _latest_started_publish(now: dt.datetime, *, batch: bool) -> tuple[dt.datetime | None, dt.datetime | None]:
    """Of the jobs on one detect queue (batch items' or the others') made within
    JOB_QUEUED_TIMEOUT (the (status, created_at) index bounds the scan) that a worker has
    started: the latest publish (enqueued_at: the queue's own, never a retry's) and the latest
    start. The queue is first in, first out: a job published to it before that publish and still
    queued was skipped over, its message gone."""
    latest = Image.objects.filter(
        status__in=(JobStatus.PROCESSING, *TERMINAL_STATUSES),
        created_at__gte=now - dt.timedelta(seconds=settings.JOB_QUEUED_TIMEOUT),
        started_at__isnull=False,
        batch__isnull=not batch,
    ).aggregate(published=Max("enqueued_at"), started=Max("started_at"))
    return latest["published"], latest["started"]


# --- Dead letters ------------------------------------------------------------------------------------


def dead_letter_record(
    *,
    task: str,
    args: Sequence = (),
    kwargs: dict | None = None,
    task_id: str = "",
    retries: int = 0,
    error: str = "",
    died_at: dt.datetime | None = None,
) -> DeadLetter:
    """Record a task message that gave up (workers.tasks drains them off the broker's dead-letter
    queue) and hand what it was about back to the sweeper's own bounded paths: a queued job or
    shadow run is marked unpublished (published again by the next sweep, counted against
    JOB_MAX_ENQUEUES), and so is a job left processing by the very attempt that gave up
    (``kwargs["attempt"]``); a finished job's delivery step is published again. Another job left
    processing is taken by the sweeper past the hard time limit; a pending callback delivery by
    its due time. Returns the record."""
    letter = DeadLetter.objects.create(
        task=task[:200], task_id=task_id[:64], args=list(args), kwargs=kwargs or {}, retries=retries, error=error, died_at=died_at
    )
    subject = args[0] if args else None
    try:
        if task == DETECT_TASK:
            job = Image.objects.filter(id=uuid.UUID(str(subject)))
            job.filter(status=JobStatus.QUEUED).update(enqueued_at=None, updated_at=timezone.now())
            attempt = (kwargs or {}).get("attempt")
            if attempt is not None:
                # Started by the attempt that gave up, and by no one since: nobody is running it.
                job.filter(status=JobStatus.PROCESSING, attempts=int(attempt)).update(
                    status=JobStatus.QUEUED, enqueued_at=None, updated_at=timezone.now()
                )
        elif task == SHADOW_DETECT_TASK:
            ShadowRun.objects.filter(id=int(subject), status=ShadowStatus.QUEUED).update(enqueued_at=None)
        elif task == DELIVER_RESULT_TASK:
            job = str(uuid.UUID(str(subject)))
            # Idempotent: a job with a delivery already reuses it (image_job_callback_delivery).
            transaction.on_commit(lambda: signature(DELIVER_RESULT_TASK, args=(job,)).apply_async(ignore_result=True), robust=True)
    except (TypeError, ValueError):
        logger.error("dead letter %s: %s with unusable arguments %r", letter.id, task, args)
    logger.error("dead letter %s recorded: %s%r after %d retries: %s", letter.id, task, tuple(args), retries, error)
    return letter
