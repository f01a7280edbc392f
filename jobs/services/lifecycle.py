"""How a job ends without being detected: canceled by its client, or expired before it started;
and the hook every terminal transition calls (job_ended).

Both end only a *queued* job, with one conditional UPDATE (``WHERE status = 'queued'``): the
detect task's start (image_job_start) locks the row and moves it queued -> processing in the same
way, so exactly one of them wins and a canceled job is never detected. A job already detecting
finishes instead. Ended jobs are called back through the ordinary outbox (status and error code
``canceled`` / ``expired``) and counted like every finished job.
"""

import logging
import uuid
from collections.abc import Callable

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from callbacks.services import callback_delivery_create, callback_delivery_enqueue
from core import metrics
from core.errors import Conflict

from ..models import Image, JobStatus, ShadowRun, ShadowStatus
from ..representation import image_representation

logger = logging.getLogger(__name__)

# What image_representation reads (jobs.selectors.JOB_PREFETCH, which this module cannot import:
# erasure calls job_ended, and selectors reaches erasure through retention).
JOB_PREFETCH = ("faces", "deliveries__attempts")

JOB_END_MESSAGES = {
    JobStatus.CANCELED: "The job was canceled before it started.",
    JobStatus.EXPIRED: "The job had not started by its expires_at.",
}

# --- The hook ---------------------------------------------------------------------------------------

# Called with the job after every terminal transition commits (completed, failed, canceled,
# expired, deleted). Batches register here to close a batch when its last item ends.
_job_ended_listeners: list[Callable[[Image], None]] = []


def job_ended_listen(listener: Callable[[Image], None]) -> None:
    """Call ``listener(image)`` after each terminal transition of a job commits (once per
    listener, however many times it registers)."""
    if listener not in _job_ended_listeners:
        _job_ended_listeners.append(listener)


def job_ended(image: Image) -> None:
    """Tell the listeners that ``image`` reached a terminal state; called by every terminal
    transition, inside its transaction: the listeners run once it commits, and not at all if it
    rolls back. A listener's error is logged, never raised into the transition."""

    def notify() -> None:
        for listener in list(_job_ended_listeners):
            try:
                listener(image)
            except Exception:
                logger.exception("job %s: a job_ended listener failed", image.id)

    if _job_ended_listeners:
        transaction.on_commit(notify)


# --- Cancel -------------------------------------------------------------------------------------------


class JobNotCancelable(Conflict):
    """The job is not queued any more: ``job_already_started`` (processing: it finishes) or
    ``job_finished`` (terminal)."""


def image_job_cancel(*, image_id: uuid.UUID) -> Image:
    """End a queued job ``canceled`` and record its callback. Raises JobNotCancelable when it
    is processing (job_already_started) or terminal (job_finished). Returns the job as it is now."""
    with transaction.atomic():
        if not _end_queued(Image.objects.filter(id=image_id), JobStatus.CANCELED):
            status = Image.objects.filter(id=image_id).values_list("status", flat=True).first()
            if status == JobStatus.PROCESSING:
                raise JobNotCancelable("job_already_started", "The job has started; it will finish and be called back.")
            raise JobNotCancelable("job_finished", f"The job has already ended ({status}).")
    return Image.objects.prefetch_related(*JOB_PREFETCH).get(id=image_id)


def image_jobs_cancel(*, queryset: QuerySet[Image]) -> int:
    """End every queued job of ``queryset`` ``canceled`` (others are left as they are: started
    ones finish). Returns how many were canceled."""
    with transaction.atomic():
        return _end_queued(queryset, JobStatus.CANCELED)


# --- Expiry -------------------------------------------------------------------------------------------


def image_job_expire_if_due(*, image: Image) -> bool:
    """Inside the detect task's start (the row locked, still queued): end ``image`` ``expired``
    if its expires_at has passed. Returns True when it did (the task then detects nothing; its
    chained delivery sends the callback)."""
    if image.status != JobStatus.QUEUED or image.expires_at is None or image.expires_at > timezone.now():
        return False
    _end(image, JobStatus.EXPIRED)
    image.save(update_fields=["status", "error_code", "error_message", "finished_at", "updated_at"])
    logger.info("job %s expired before it started", image.id)
    return True


def image_jobs_expire_sweep(*, limit: int = 500) -> int:
    """End ``expired`` the queued jobs whose expires_at has passed (Celery beat), at most
    ``limit`` per call, and record their callbacks. Returns how many."""
    now = timezone.now()
    due = Image.objects.filter(status=JobStatus.QUEUED, expires_at__lte=now).order_by("expires_at")
    ids = list(due.values_list("id", flat=True)[:limit])
    if not ids:
        return 0
    with transaction.atomic():
        count = _end_queued(Image.objects.filter(id__in=ids, expires_at__lte=now), JobStatus.EXPIRED)
    if count:
        logger.info("expired %d queued job(s)", count)
    return count


# --- The transition ----------------------------------------------------------------------------------


def shadow_runs_abandon(*, image_ids, code: str) -> int:
    """Fail the queued shadow runs of jobs that ended without a photo to compare (canceled,
    expired, or its URL could not be fetched): there is nothing for them to detect."""
    return ShadowRun.objects.filter(job_id__in=image_ids, status=ShadowStatus.QUEUED).update(
        status=ShadowStatus.FAILED, error_code=code, finished_at=timezone.now()
    )


def _end(image: Image, status: str) -> None:
    shadow_runs_abandon(image_ids=[image.id], code=str(status))
    image.status = status
    image.error_code = str(status)
    image.error_message = JOB_END_MESSAGES[status]
    image.finished_at = timezone.now()
    transaction.on_commit(lambda: metrics.job_finished(image))  # once, and only if it stuck
    job_ended(image)


def _end_queued(queryset: QuerySet[Image], status: str) -> int:
    """End the queued jobs of ``queryset``: their rows locked while queued (the detect task's
    start locks the row too, so the two take turns), then one conditional UPDATE (``WHERE status
    = 'queued'``), then, per job ended, the metrics, the hook and its callback delivery. Must run
    inside a transaction."""
    now = timezone.now()
    ended = list(
        Image.objects.select_for_update()
        .filter(id__in=queryset.values("id"), status=JobStatus.QUEUED)
        .order_by("id")  # one lock order: two bulk cancels never deadlock
        .values_list("id", flat=True)
    )
    if not ended:
        return 0
    count = Image.objects.filter(id__in=ended, status=JobStatus.QUEUED).update(
        status=status, error_code=str(status), error_message=JOB_END_MESSAGES[status], finished_at=now, updated_at=now
    )
    shadow_runs_abandon(image_ids=ended, code=str(status))
    for image in Image.objects.prefetch_related(*JOB_PREFETCH).filter(id__in=ended):
        transaction.on_commit(lambda image=image: metrics.job_finished(image))  # once, and only if it stuck
        job_ended(image)
        if image.callback_url and not image.deliveries.all():
            delivery = callback_delivery_create(
                image_id=image.id, url=image.callback_url, render=lambda d, image=image: image_representation(image, delivery=d)
            )
            # Sent now: the job's own detect -> deliver chain may wait long in the queue (it
            # finds this delivery and makes no other).
            callback_delivery_enqueue(delivery_id=delivery.id)
    return count
