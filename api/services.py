"""The job's business logic. Views and tasks call these functions and nothing else writes a job.

Every state change locks the row and checks the current state first, so a task delivered twice
(acks_late redelivery, a retry, the sweeper) never applies twice.
"""

import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from . import storage
from .errors import ApiError
from .imaging import ImageRejected, image_decode_rgb, image_probe
from .models import TERMINAL_STATUSES, CallbackStatus, Face, Image, JobStatus

logger = logging.getLogger(__name__)

# A job whose detection was started this many times (redelivered after worker crashes or hard
# time limits) is failed instead of being tried again: one poisonous photo must not loop forever.
MAX_DETECT_ATTEMPTS = 3


# --- Submission -------------------------------------------------------------------------------


def _object_key(kind: str, image_id: uuid.UUID, extension: str, when=None) -> str:
    # Keys are the server's choice: the day the job was made (for lifecycle rules) and its id.
    return f"{kind}/{(when or timezone.now()):%Y/%m/%d}/{image_id}.{extension}"


def image_job_create(
    *, upload: IO[bytes], size: int, request_id: str, callback_url: str = "", filename: str = ""
) -> Image:
    """Accept an upload: check the image, store it, record a queued job, and enqueue detection
    once the row is committed. Raises ApiError (field "image") for an unacceptable file; nothing
    is left behind then."""
    if size > settings.MAX_UPLOAD_BYTES:
        raise ApiError(
            "file_too_large",
            f"The upload is {size} bytes; at most {settings.MAX_UPLOAD_BYTES} bytes are accepted.",
            field="image",
            status_code=413,
        )
    try:
        info = image_probe(upload)
    except ImageRejected as exc:
        status_code = 413 if exc.code == "image_too_large" else 400
        raise ApiError(exc.code, exc.message, field="image", status_code=status_code) from exc

    image_id = uuid.uuid4()
    key = _object_key("originals", image_id, info.extension)
    try:
        storage.storage_put(key=key, data=upload, length=size, content_type=info.content_type)
    except storage.StorageError as exc:
        logger.error("storing upload for %s failed: %s", request_id, exc)
        raise ApiError("storage_unavailable", "The image could not be stored; try again.", status_code=503) from exc

    try:
        with transaction.atomic():
            image = Image.objects.create(
                id=image_id,
                request_id=request_id,
                callback_url=callback_url,
                original_filename=filename[:255],
                original_key=key,
                original_content_type=info.content_type,
                original_size=size,
                width=info.width,
                height=info.height,
                callback_status=CallbackStatus.PENDING if callback_url else CallbackStatus.NONE,
            )
            # The worker must never see an id whose row is not committed.
            transaction.on_commit(lambda: image_job_enqueue(image_id=image_id))
    except Exception:
        # No row, so no object either: a rejected or failed request leaves nothing behind.
        _delete_quietly(key)
        raise
    return image


def image_job_enqueue(*, image_id: uuid.UUID) -> None:
    """Publish the detect -> deliver chain for a committed job. A broker outage is logged, not
    raised: the job stays queued and the client still gets its 202."""
    from workers.tasks import deliver_result, detect_faces  # tasks import this module

    try:
        (detect_faces.si(str(image_id)) | deliver_result.si(str(image_id))).apply_async()
    except Exception:
        logger.exception("could not enqueue job %s; it stays queued", image_id)


def _delete_quietly(key: str) -> None:
    try:
        storage.storage_delete(key=key)
    except storage.StorageError:
        logger.exception("could not delete orphan object %s", key)


# --- Detection --------------------------------------------------------------------------------


@dataclass(frozen=True)
class FaceData:
    """A face in integer pixel coordinates, ready to store."""

    x: int
    y: int
    width: int
    height: int
    confidence: float
    landmarks: dict[str, list[float]]


def image_job_start(*, image_id: uuid.UUID) -> Image | None:
    """Move a job to processing. Returns None when the job needs no work (already terminal,
    unknown, or failed here for too many attempts)."""
    with transaction.atomic():
        image = Image.objects.select_for_update().filter(id=image_id).first()
        if image is None:
            logger.warning("job %s does not exist; skipping", image_id)
            return None
        if image.status in TERMINAL_STATUSES:
            logger.info("job %s is already %s; skipping", image_id, image.status)
            return None
        # Found processing: the attempt before this one died without finishing (worker killed,
        # hard time limit) and the broker redelivered the task.
        if image.status == JobStatus.PROCESSING and image.attempts >= MAX_DETECT_ATTEMPTS:
            _fail(image, "too_many_attempts", f"Detection was started {image.attempts} times without finishing.")
            return None
        image.status = JobStatus.PROCESSING
        image.attempts += 1
        image.started_at = timezone.now()
        image.save(update_fields=["status", "attempts", "started_at", "updated_at"])
        return image


def image_job_complete(
    *, image_id: uuid.UUID, faces: Sequence[FaceData], model_version: str, width: int, height: int
) -> bool:
    """Record the faces of a processing job, replacing any from an earlier attempt, and mark it
    completed. Returns False (and changes nothing) if the job is not processing."""
    with transaction.atomic():
        image = Image.objects.select_for_update().get(id=image_id)
        if image.status != JobStatus.PROCESSING:
            logger.info("job %s is %s, not processing; not completing it", image_id, image.status)
            return False
        image.faces.all().delete()
        Face.objects.bulk_create(
            Face(
                image=image,
                index=index,
                box_x=face.x,
                box_y=face.y,
                box_width=face.width,
                box_height=face.height,
                confidence=face.confidence,
                landmarks=face.landmarks,
            )
            for index, face in enumerate(faces)
        )
        image.status = JobStatus.COMPLETED
        image.model_version = model_version
        image.width, image.height = width, height
        image.face_count = len(faces)
        image.error_code = image.error_message = ""
        image.finished_at = timezone.now()
        image.save()
        return True


def _fail(image: Image, code: str, message: str) -> None:
    image.status = JobStatus.FAILED
    image.error_code = code
    image.error_message = message[:2000]
    image.finished_at = timezone.now()
    image.save(update_fields=["status", "error_code", "error_message", "finished_at", "updated_at"])
    logger.warning("job %s failed: %s: %s", image.id, code, message)


def image_job_fail(*, image_id: uuid.UUID, code: str, message: str) -> bool:
    """Mark a job failed with an error code. Returns False if it was already terminal."""
    with transaction.atomic():
        image = Image.objects.select_for_update().filter(id=image_id).first()
        if image is None or image.status in TERMINAL_STATUSES:
            return False
        _fail(image, code, message)
        return True


def faces_from_detections(detections: Sequence, *, width: int, height: int) -> list[FaceData]:
    """Round detector output to whole pixels inside the image; landmarks keep one decimal."""
    faces = []
    for det in detections:
        x1 = min(max(int(round(det.x1)), 0), width)
        y1 = min(max(int(round(det.y1)), 0), height)
        x2 = min(max(int(round(det.x2)), 0), width)
        y2 = min(max(int(round(det.y2)), 0), height)
        faces.append(
            FaceData(
                x=x1,
                y=y1,
                width=x2 - x1,
                height=y2 - y1,
                confidence=round(float(det.confidence), 6),
                landmarks={name: [round(px, 1), round(py, 1)] for name, (px, py) in det.landmarks.items()},
            )
        )
    return faces


def image_job_detect(*, image_id: uuid.UUID) -> None:
    """Run detection for a job: load the photo, orient it, detect, store the faces.

    Permanent problems (an undecodable photo, a detector that cannot load) fail the job at once.
    Transient ones (storage.StorageError, database errors) propagate for the task to retry.
    """
    from workers.detection import UnknownDetector, get_detector
    from workers.detection.mtcnn import DetectorUnavailable

    image = image_job_start(image_id=image_id)
    if image is None:
        return
    data = storage.storage_get(key=image.original_key)
    try:
        rgb = image_decode_rgb(data)
    except ImageRejected as exc:
        image_job_fail(image_id=image_id, code=exc.code, message=exc.message)
        return
    try:
        detector = get_detector(settings.DETECTOR_MODEL)
    except (UnknownDetector, DetectorUnavailable) as exc:
        image_job_fail(image_id=image_id, code="detector_unavailable", message=f"{type(exc).__name__}: {exc}")
        return
    started = time.monotonic()
    detections = detector.detect(rgb)
    logger.info(
        "job %s: %d faces with %s in %.0f ms",
        image_id,
        len(detections),
        detector.model_version,
        (time.monotonic() - started) * 1000,
    )
    image_job_complete(
        image_id=image_id,
        faces=faces_from_detections(detections, width=rgb.width, height=rgb.height),
        model_version=detector.model_version,
        width=rgb.width,
        height=rgb.height,
    )


# --- Result: annotation and callback ------------------------------------------------------------


def image_job_annotate(*, image_id: uuid.UUID) -> None:
    """Draw the faces of a completed job on a copy of its photo and store it as JPEG. Does
    nothing for a job that is not completed or is already annotated; the key is fixed per job,
    so a repeat overwrites the same object."""
    from workers.annotate import annotate_jpeg

    image = Image.objects.get(id=image_id)
    if image.status != JobStatus.COMPLETED or image.annotated_key:
        return
    rgb = image_decode_rgb(storage.storage_get(key=image.original_key))
    jpeg = annotate_jpeg(rgb, list(image.faces.all()))
    key = _object_key("annotated", image.id, "jpg", image.created_at)
    storage.storage_put(key=key, data=jpeg, length=len(jpeg), content_type="image/jpeg")
    Image.objects.filter(id=image_id, annotated_key="").update(annotated_key=key, updated_at=timezone.now())


def image_job_deliver_callback(*, image_id: uuid.UUID) -> float | None:
    """POST the job's representation to its callback_url once and record the attempt.

    Returns the seconds to wait before the next try, or None when delivery is over (delivered,
    failed for good, or nothing to deliver). 2xx is delivered. Connection errors, timeouts, 408,
    429 and 5xx are retried after the delays in CALLBACK_RETRY_DELAYS; anything else (3xx
    included: redirects are never followed) fails the delivery at once.
    """
    from workers.callbacks import post_json

    from .serializers import image_representation

    image = Image.objects.prefetch_related("faces").get(id=image_id)
    if not image.callback_url or image.callback_status != CallbackStatus.PENDING:
        return None

    result = post_json(image.callback_url, image_representation(image))
    code = result.status_code
    delivered = code is not None and 200 <= code < 300
    retryable = not delivered and (code is None or code in (408, 429) or code >= 500)
    delays = settings.CALLBACK_RETRY_DELAYS

    with transaction.atomic():
        locked = Image.objects.select_for_update().get(id=image_id)
        if locked.callback_status != CallbackStatus.PENDING:
            return None  # another delivery of the same task got there first
        locked.callback_attempts += 1
        retries_left = retryable and locked.callback_attempts <= len(delays)
        locked.callback_last_status_code = code
        locked.callback_last_error = result.error or ("" if delivered else result.response_excerpt[:500])
        if delivered:
            locked.callback_status = CallbackStatus.DELIVERED
            locked.callback_delivered_at = timezone.now()
        elif not retries_left:
            locked.callback_status = CallbackStatus.FAILED
        locked.save()
    logger.log(
        logging.INFO if delivered else logging.WARNING,
        "callback for job %s, attempt %d: %s -> %s",
        image_id,
        locked.callback_attempts,
        code or result.error,
        locked.callback_status,
    )
    return delays[locked.callback_attempts - 1] if retries_left else None


def image_job_requeue(*, image_id: uuid.UUID) -> None:
    """Put a processing job back to queued before a retry, so that the next start is not taken
    for the redelivery of a crashed attempt."""
    Image.objects.filter(id=image_id, status=JobStatus.PROCESSING).update(
        status=JobStatus.QUEUED, updated_at=timezone.now()
    )
