"""The job's business logic. Views and tasks call these functions and nothing else writes a job.

Every state change locks the row and checks the current state first, so a task delivered twice
(acks_late redelivery, a retry, the sweeper) never applies twice.
"""

import datetime as dt
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from . import storage
from .errors import ApiError
from .imaging import ImageRejected, image_decode_rgb, image_probe
from .models import TERMINAL_STATUSES, ApiClient, Face, Image, JobStatus
from .registry import detector_spec, detector_version_for_job

logger = logging.getLogger(__name__)

# A job whose detection was started this many times (redelivered after worker crashes or hard
# time limits) is failed instead of being tried again: one poisonous photo must not loop forever.
MAX_DETECT_ATTEMPTS = 3


# --- Submission -------------------------------------------------------------------------------


def _object_key(kind: str, image_id: uuid.UUID, extension: str, when=None) -> str:
    # Keys are the server's choice: the day the job was made (for lifecycle rules) and its id.
    return f"{kind}/{(when or timezone.now()):%Y/%m/%d}/{image_id}.{extension}"


def image_job_create(
    *,
    client: ApiClient,
    upload: IO[bytes],
    size: int,
    request_id: str,
    callback_url: str = "",
    filename: str = "",
    model_version: str = "",
) -> tuple[Image, bool]:
    """Accept an upload: check the image, store it, record a queued job, and enqueue detection
    once the row is committed. Returns (job, created).

    Submission is idempotent per client and request_id: the same photo and callback_url again return the
    existing job (created False); a different photo or callback_url under a used request_id is
    a 409. Raises ApiError (field "image") for an unacceptable file. A refused request leaves no
    row and no object behind. ``model_version`` (a version id) pins the detector; by default the
    active one is pinned.
    """
    version = detector_version_for_job(requested=model_version or None)
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
        status_code = {"image_too_large": 413, "unsupported_image_format": 415}.get(exc.code, 400)
        raise ApiError(exc.code, exc.message, field="image", status_code=status_code) from exc

    existing = Image.objects.filter(client=client, request_id=request_id).first()
    if existing is not None:
        return _same_submission(existing, sha256=info.sha256, callback_url=callback_url, model_version=model_version), False

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
                client=client,
                request_id=request_id,
                callback_url=callback_url,
                # For operators' eyes only; control characters would garble the admin and logs.
                original_filename="".join(ch for ch in filename if ch.isprintable())[:255],
                original_key=key,
                original_content_type=info.content_type,
                original_size=size,
                original_sha256=info.sha256,
                detector_version=version,
                model_version=version.label,
                width=info.width,
                height=info.height,
            )
            # The worker must never see an id whose row is not committed.
            transaction.on_commit(lambda: image_job_enqueue(image_id=image_id))
    except IntegrityError:
        # The same request_id raced in from a concurrent request and won.
        _delete_quietly(key)
        existing = Image.objects.get(client=client, request_id=request_id)
        return _same_submission(existing, sha256=info.sha256, callback_url=callback_url, model_version=model_version), False
    except Exception:
        # No row, so no object either.
        _delete_quietly(key)
        raise
    return image, True


def _same_submission(existing: Image, *, sha256: str, callback_url: str, model_version: str) -> Image:
    other_version = bool(model_version) and model_version != existing.detector_version_id
    if existing.original_sha256 != sha256 or existing.callback_url != callback_url or other_version:
        raise ApiError(
            "request_id_conflict",
            "This request_id was already used for a different image, callback_url or model_version.",
            field="request_id",
            status_code=409,
        )
    return existing


def image_job_enqueue(*, image_id: uuid.UUID) -> bool:
    """Publish the detect -> deliver chain for a committed job and record it. A broker outage
    is logged, not raised: the job stays queued, unpublished, for the sweeper to publish."""
    from workers.tasks import deliver_result, detect_faces  # tasks import this module

    try:
        (detect_faces.si(str(image_id)) | deliver_result.si(str(image_id))).apply_async()
    except Exception:
        logger.exception("could not enqueue job %s; the sweeper will retry", image_id)
        return False
    Image.objects.filter(id=image_id).update(
        enqueued_at=timezone.now(), enqueue_count=F("enqueue_count") + 1, updated_at=timezone.now()
    )
    return True


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


def image_job_start(*, image_id: uuid.UUID, redelivered: bool = False) -> Image | None:
    """Move a job to processing. Returns None when there is no work to do here: the job is
    terminal or unknown, another worker is running it, or it failed for too many attempts.

    ``redelivered`` is the broker's flag: the message was handed out before and not acknowledged,
    so the worker that had it died and this one takes over.
    """
    with transaction.atomic():
        image = Image.objects.select_for_update(of=("self",)).select_related("detector_version").filter(id=image_id).first()
        if image is None:
            logger.warning("job %s does not exist; skipping", image_id)
            return None
        if image.status in TERMINAL_STATUSES:
            logger.info("job %s is already %s; skipping", image_id, image.status)
            return None
        if image.status == JobStatus.PROCESSING:
            if not (redelivered or _processing_is_stale(image)):
                # A second copy of the message (the sweeper re-published it) while the first runs.
                logger.info("job %s is being processed elsewhere; skipping this copy", image_id)
                return None
            if image.attempts >= MAX_DETECT_ATTEMPTS:
                _fail(image, "too_many_attempts", f"Detection was started {image.attempts} times without finishing.")
                return None
        image.status = JobStatus.PROCESSING
        image.attempts += 1
        image.started_at = timezone.now()
        image.save(update_fields=["status", "attempts", "started_at", "updated_at"])
        return image


def _processing_is_stale(image: Image) -> bool:
    # Past the hard time limit the worker that started it cannot still be running it.
    deadline = timezone.now() - dt.timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT + 30)
    return image.started_at is None or image.started_at < deadline


def image_job_complete(
    *, image_id: uuid.UUID, faces: Sequence[FaceData], model_version: str, width: int, height: int
) -> bool:
    """Record the faces of a processing job (each marked with the job's detector version),
    replacing any from an earlier attempt, and mark it completed. Returns False (and changes
    nothing) if the job is not processing."""
    with transaction.atomic():
        image = Image.objects.select_for_update().get(id=image_id)
        if image.status != JobStatus.PROCESSING:
            logger.info("job %s is %s, not processing; not completing it", image_id, image.status)
            return False
        image.faces.all().delete()
        Face.objects.bulk_create(
            Face(
                image=image,
                detector_version_id=image.detector_version_id,
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


# What a client reads (in the API and the callback) for failures whose cause is the operators'
# business. Exception text can carry hostnames, paths, SQL or credentials, so it goes to the log
# with the job id (logger.exception) and the job gets one of these fixed sentences instead.
JOB_ERROR_MESSAGES = {
    "internal_error": "An unexpected error stopped detection; the operators have been told.",
    "dependency_unavailable": "Storage or the database stayed unavailable through every retry; try again later.",
    "detector_unavailable": "The detector version for this job cannot run on the workers; the operators have been told.",
    "model_weights_mismatch": "The detector version's weight files do not match their registered checksums; the operators have been told.",
}


def image_job_detect(*, image_id: uuid.UUID, redelivered: bool = False) -> None:
    """Run detection for a job: load the photo, orient it, detect, store the faces.

    Permanent problems (an undecodable photo, a detector that cannot load) fail the job at once.
    Transient ones (storage.StorageError, database errors) propagate for the task to retry.
    """
    from workers.detection import UnknownDetector, get_detector
    from workers.detection.mtcnn import DetectorUnavailable
    from workers.detection.weights import WeightsMismatch

    image = image_job_start(image_id=image_id, redelivered=redelivered)
    if image is None:
        return
    data = storage.storage_get(key=image.original_key)
    try:
        rgb = image_decode_rgb(data)
    except ImageRejected as exc:
        image_job_fail(image_id=image_id, code=exc.code, message=exc.message)
        return
    try:
        detector = get_detector(detector_spec(image.detector_version))
    except WeightsMismatch:
        logger.exception("job %s: weights of %s refused", image_id, image.detector_version_id)
        image_job_fail(image_id=image_id, code="model_weights_mismatch", message=JOB_ERROR_MESSAGES["model_weights_mismatch"])
        return
    except (UnknownDetector, DetectorUnavailable):
        logger.exception("job %s: detector %s cannot run here", image_id, image.detector_version_id)
        image_job_fail(image_id=image_id, code="detector_unavailable", message=JOB_ERROR_MESSAGES["detector_unavailable"])
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


def image_job_requeue(*, image_id: uuid.UUID) -> None:
    """Put a processing job back to queued before a retry, so that the next start is not taken
    for the redelivery of a crashed attempt."""
    Image.objects.filter(id=image_id, status=JobStatus.PROCESSING).update(
        status=JobStatus.QUEUED, updated_at=timezone.now()
    )


def image_jobs_sweep() -> dict[str, int]:
    """Find jobs that would otherwise never finish and push them on (Celery beat calls this).

    - queued and never published (the broker was down at submit), after JOB_UNPUBLISHED_GRACE;
    - queued long after publishing (the message was lost), after JOB_QUEUED_TIMEOUT;
    - processing past the hard time limit (the worker vanished and the message with it).
    Each is re-published, at most JOB_MAX_ENQUEUES times in all; then it fails with "stuck".
    """
    now = timezone.now()
    stuck = (
        Q(status=JobStatus.QUEUED, enqueued_at__isnull=True, created_at__lt=now - dt.timedelta(seconds=settings.JOB_UNPUBLISHED_GRACE))
        | Q(status=JobStatus.QUEUED, enqueued_at__lt=now - dt.timedelta(seconds=settings.JOB_QUEUED_TIMEOUT))
        | Q(status=JobStatus.PROCESSING, started_at__lt=now - dt.timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT + 30))
    )
    counts = {"republished": 0, "failed": 0}
    for image_id, enqueue_count in Image.objects.filter(stuck).values_list("id", "enqueue_count")[:500]:
        if enqueue_count >= settings.JOB_MAX_ENQUEUES:
            if image_job_fail(image_id=image_id, code="stuck", message=f"Published {enqueue_count} times without finishing."):
                counts["failed"] += 1
        elif image_job_enqueue(image_id=image_id):
            counts["republished"] += 1
    if any(counts.values()):
        logger.warning("sweeper: %s", counts)
    return counts
