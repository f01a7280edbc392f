"""Erasure on request: a job's photo, annotated image and detections removed, a tombstone kept.

The tombstone is the job's row with its id, client, request_id, times, the model version that
served it and status ``deleted``; everything that describes the photo or the person in it
(detections, size, file name, digest, cohort, callback_url, labels) is cleared. It keeps the
request_id spent, so a replayed upload cannot store the photo again (jobs.services answers it with
the tombstone), and it is the audit record that the erasure happened (deleted_at).
docs/security.md says what is kept and why.
"""

import logging
import uuid

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from callbacks.services import callback_deliveries_erase
from core.errors import Unavailable
from storage import s3 as storage

from .keys import annotated_object_key
from .models import TERMINAL_STATUSES, Image, JobStatus, ShadowRun, ShadowStatus
from .services.lifecycle import job_ended

logger = logging.getLogger(__name__)

# The last error of a callback delivery cancelled by an erasure, and the error code of a shadow
# run that had not run yet.
ERASED = "erased"
DELIVERY_CANCELLED = "cancelled: the job was erased"


def image_job_erase(*, image_id: uuid.UUID) -> Image:
    """Erase a job whatever its state: detections, shadow runs' detections and callback bodies
    removed, pending callbacks and queued shadow runs cancelled, the row made a tombstone, then
    both objects deleted from the store at once. A worker still busy with the job finds it
    deleted and stops (every step checks the status under a lock). Idempotent: erasing a
    tombstone again only retries the objects.

    Raises Unavailable when the store refused the deletion: the job is a tombstone already, and
    its keys stay recorded until the objects are gone (a repeated call, or retention's sweep,
    tries again)."""
    now = timezone.now()
    with transaction.atomic():
        image = Image.objects.select_for_update(of=("self",)).get(id=image_id)
        if image.status != JobStatus.DELETED:
            was = image.status
            image.faces.all().delete()
            ShadowRun.objects.filter(job=image, status=ShadowStatus.QUEUED).update(
                status=ShadowStatus.FAILED, error_code=ERASED, finished_at=now
            )
            ShadowRun.objects.filter(job=image).update(faces=[])
            cancelled = callback_deliveries_erase(image_id=image.id, reason=DELIVERY_CANCELLED)
            # The annotated key even when no image was recorded: a worker may be drawing it now
            # (it deletes its own if the job is gone by the time it records it; this covers the
            # other order).
            image.annotated_key = image.annotated_key or annotated_object_key(image)
            image.status = JobStatus.DELETED
            image.deleted_at = now
            image.callback_url = ""
            image.image_url = ""
            image.original_filename = image.original_content_type = image.original_sha256 = ""
            image.original_size = 0
            image.width = image.height = image.face_count = None
            image.detection_ms = image.detection_cpu_ms = None
            image.detector_cold = False
            image.labels = []
            image.cohort = ""
            image.error_code = image.error_message = ""
            image.save()
            if was not in TERMINAL_STATUSES:
                job_ended(image)
            logger.info("job %s erased (it was %s; %d pending callback(s) cancelled)", image.id, was, cancelled)
    try:
        image_job_objects_purge(image=image)
    except storage.StorageError as exc:
        raise Unavailable(
            "storage_unavailable",
            "The job is erased, but its photos could not be removed from storage yet; try again (they are also retried automatically).",
        ) from exc
    return image


def image_job_objects_purge(*, image: Image) -> None:
    """Delete an erased job's objects from the store and clear their keys. Raises StorageError."""
    for key in (image.original_key, image.annotated_key):
        if key:
            storage.storage_delete(key=key)  # a key that is already gone is no error
    Image.objects.filter(id=image.id, status=JobStatus.DELETED).update(original_key="", annotated_key="", updated_at=timezone.now())
    image.original_key = image.annotated_key = ""


def erased_jobs_unpurged(*, limit: int) -> list[Image]:
    """Erased jobs whose objects the store refused to delete at the time."""
    return list(
        Image.objects.filter(Q(status=JobStatus.DELETED) & (~Q(original_key="") | ~Q(annotated_key=""))).order_by("deleted_at")[:limit]
    )
