"""Retention: photos and annotated images deleted from the store after RETENTION_DAYS_ORIGINALS
and RETENTION_DAYS_ANNOTATED days (0: kept for good), by a Celery beat task, in batches.

The job's row and its detections stay (the result a client may still read; no photo is in
them); the job is marked (original_expired_at, annotated_expired_at) and the API answers 410 Gone
for an image that expired. Age counts from the job's creation, as a bucket lifecycle rule on the
same prefixes counts from the object's (docs/operations.md). An object that something still
needs is never deleted: a job that is not finished or finished less than RETENTION_SETTLE ago
(its annotation and first callback are under way), one with a queued shadow run (a live
rollout's comparison reads the photo), or one with a callback still pending (its receiver may
fetch output_image_url).
"""

import datetime as dt
import logging

from django.conf import settings
from django.db.models import QuerySet
from django.utils import timezone

from callbacks.models import DeliveryStatus
from storage import s3 as storage

from .erasure import erased_jobs_unpurged, image_job_objects_purge
from .models import Image, JobStatus, ShadowStatus

logger = logging.getLogger(__name__)

# How long after a job finished its objects are still needed whatever their age: the chain's
# annotation and first callback take seconds, a queue backed up after an outage longer.
RETENTION_SETTLE = dt.timedelta(hours=1)
# Batches one run may do per kind: bounds a run after retention is switched on over a large
# backlog (the next run goes on where this one stopped).
MAX_BATCHES_PER_RUN = 20

# kind -> (the key field, the expiry mark, the setting with its days)
KINDS = {
    "original": ("original_key", "original_expired_at", "RETENTION_DAYS_ORIGINALS"),
    "annotated": ("annotated_key", "annotated_expired_at", "RETENTION_DAYS_ANNOTATED"),
}


def retention_days(kind: str) -> int:
    """The days a ``kind`` ("original" or "annotated") of object is kept; 0: for good."""
    return max(getattr(settings, KINDS[kind][2]), 0)


def retention_cutoff(kind: str, *, now: dt.datetime | None = None) -> dt.datetime | None:
    """Objects of jobs made before this may be deleted; None when the kind is kept for good."""
    days = retention_days(kind)
    return None if not days else (now or timezone.now()) - dt.timedelta(days=days)


def image_expired(image: Image, kind: str) -> bool:
    """The job's ``kind`` of object is gone for retention's sake: retention deleted it, or it is
    past the retention period (a bucket lifecycle rule may have deleted it first)."""
    if getattr(image, KINDS[kind][1]) is not None:
        return True
    cutoff = retention_cutoff(kind)
    return cutoff is not None and image.created_at < cutoff


def _expirable(kind: str, *, now: dt.datetime) -> QuerySet[Image]:
    key_field, mark_field, _ = KINDS[kind]
    return (
        Image.objects.filter(
            # Canceled and expired uploads keep a photo too (one by URL that never ran has none).
            status__in=(JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.EXPIRED),
            created_at__lt=retention_cutoff(kind, now=now),
            finished_at__lt=now - RETENTION_SETTLE,
            **{f"{mark_field}__isnull": True},
        )
        .exclude(**{key_field: ""})
        .exclude(shadow_runs__status=ShadowStatus.QUEUED)
        .exclude(deliveries__status=DeliveryStatus.PENDING)
        .order_by("created_at")
    )


def _expire(kind: str, *, now: dt.datetime, batch_size: int) -> tuple[int, bool]:
    """Delete expired objects of one kind, batch after batch. Returns (deleted, store_failed)."""
    key_field, mark_field, _ = KINDS[kind]
    deleted = 0
    for _ in range(MAX_BATCHES_PER_RUN):
        batch = list(_expirable(kind, now=now).values_list("id", key_field)[:batch_size])
        done = []
        try:
            for image_id, key in batch:
                storage.storage_delete(key=key)  # one already gone (a lifecycle rule) is no error
                done.append(image_id)
        except storage.StorageError:
            # Logged and counted by storage; the next run tries again.
            return deleted + _mark(done, mark_field, now), True
        deleted += _mark(done, mark_field, now)
        if len(batch) < batch_size:
            break
    return deleted, False


def _mark(image_ids: list, mark_field: str, now: dt.datetime) -> int:
    if image_ids:
        Image.objects.filter(id__in=image_ids).update(**{mark_field: now, "updated_at": now})
    return len(image_ids)


def retention_sweep(*, now: dt.datetime | None = None, batch_size: int | None = None) -> dict[str, int]:
    """Delete the objects that are past their retention and not needed, mark their jobs, and
    finish erasures the store refused at the time. Returns how many objects of each kind were
    deleted, how many erased jobs were finished, and whether the store failed ("errors")."""
    now = now or timezone.now()
    batch_size = batch_size or settings.RETENTION_BATCH_SIZE
    counts = {"originals": 0, "annotated": 0, "erasures": 0, "errors": 0}
    for kind, count_name in (("original", "originals"), ("annotated", "annotated")):
        if retention_days(kind):
            deleted, failed = _expire(kind, now=now, batch_size=batch_size)
            counts[count_name] += deleted
            counts["errors"] += int(failed)
    for image in erased_jobs_unpurged(limit=batch_size):
        try:
            image_job_objects_purge(image=image)
            counts["erasures"] += 1
        except storage.StorageError:
            counts["errors"] += 1
            break
    if any(counts.values()):
        logger.info("retention: %s", counts)
    return counts
