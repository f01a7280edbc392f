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

from celery import signature
from django.conf import settings
from django.db import IntegrityError, InterfaceError, OperationalError, connection, transaction
from django.db.models import F, Max, Q
from django.utils import timezone

from callbacks.models import CallbackDelivery
from callbacks.services import callback_delivery_create, callback_delivery_enqueue
from clients.models import ApiClient
from core import metrics
from core.errors import Conflict, DomainError, TooLarge, Unavailable, UnsupportedFormat
from core.logging import log_context_get
from detection import DetectorUnavailable, UnknownDetector, engines
from detection.annotate import annotate_jpeg
from detection.compare import agreement, boxes_of, labels_of
# The label rule; api/serializers.py reads it from here (api does not import detection).
from detection.labels import FACE, LABEL_MAX_LENGTH, LABEL_PATTERN, MAX_LABELS, label_valid, labels_unique
from detection.base import ArtifactInvalid
from detection.weights import WeightsMismatch
from registry.services import detector_spec, detector_version_for_job
from rollouts.models import Variant
from rollouts.services import rollout_route, shadow_sampled, shadow_variant
from storage import s3 as storage

from .imaging import ImageRejected, image_decode_rgb, image_probe
from .models import TERMINAL_STATUSES, DeadLetter, Face, Image, JobStatus, ShadowRun, ShadowStatus
from .representation import detection_representation, image_representation
from .selectors import JOB_PREFETCH

logger = logging.getLogger(__name__)

# The Celery tasks (workers/tasks.py) that run a job, by name: services never import task modules.
DETECT_TASK = "workers.tasks.detect_faces"
DELIVER_RESULT_TASK = "workers.tasks.deliver_result"
SHADOW_DETECT_TASK = "workers.tasks.shadow_detect"

# A job whose detection was started this many times (redelivered after worker crashes or hard
# time limits) is failed instead of being tried again: one poisonous photo must not loop forever.
MAX_DETECT_ATTEMPTS = 3


class JobInterrupted(Exception):
    """A transient error (storage, the database) after this task had started the job. ``attempt``
    is the job's attempt number that the task ran as: its retry passes it back to image_job_start,
    which then takes the job over even if it still says processing (the requeue needed the
    database that had just gone away). The cause is the exception's __cause__."""

    def __init__(self, attempt: int) -> None:
        super().__init__(f"interrupted during attempt {attempt}")
        self.attempt = attempt


# --- Submission -------------------------------------------------------------------------------


def _object_key(kind: str, image_id: uuid.UUID, extension: str, when=None) -> str:
    # Keys are the server's choice: the day the job was made (for lifecycle rules) and its id.
    return f"{kind}/{(when or timezone.now()):%Y/%m/%d}/{image_id}.{extension}"


def annotated_object_key(image: Image) -> str:
    """The key of a job's annotated image: fixed per job, whether it was made yet or not."""
    return _object_key("annotated", image.id, "jpg", image.created_at)


def image_job_create(
    *,
    client: ApiClient,
    upload: IO[bytes],
    size: int,
    request_id: str,
    callback_url: str = "",
    filename: str = "",
    model_version: str = "",
    cohort: str = "",
    labels: Sequence[str] = (),
) -> tuple[Image, bool]:
    """Accept an upload: check the image, store it, record a queued job, and enqueue detection
    once the row is committed. Returns (job, created).

    Submission is idempotent per client and request_id: the same photo, callback_url, cohort and
    labels again return the existing job (created False); a different one under a used
    request_id is a 409. Raises a DomainError (field "image") for an unacceptable file. A refused
    request leaves no row and no object behind. ``model_version`` (a version id) pins the
    detector; by default the live rollout routes the job by ``cohort`` (else by its client) to the
    baseline or the candidate, and outside a rollout the active version is pinned. ``labels``:
    keep only detections with these labels (empty: all); each must be one the pinned version can
    return (field "labels").
    """
    labels = _labels_asked(labels)
    route = None
    if model_version:
        # Asked for by name: no rollout decides, and the job counts in no rollout's figures.
        version = detector_version_for_job(requested=model_version)
    else:
        route = rollout_route(client_id=client.id, cohort=cohort)
        version = route.version if route is not None else detector_version_for_job(requested=None)
    if size > settings.MAX_UPLOAD_BYTES:
        raise TooLarge(
            "file_too_large",
            f"The upload is {size} bytes; at most {settings.MAX_UPLOAD_BYTES} bytes are accepted.",
            field="image",
        )
    try:
        info = image_probe(upload)
    except ImageRejected as exc:
        kind = {"image_too_large": TooLarge, "unsupported_image_format": UnsupportedFormat}.get(exc.code, DomainError)
        raise kind(exc.code, exc.message, field="image") from exc

    # Most uploads are new: a query without columns first, the whole row only for a repeat.
    repeat = Image.objects.filter(client=client, request_id=request_id)
    existing = repeat.first() if repeat.exists() else None
    if existing is not None and existing.status == JobStatus.DELETED:
        # The job was erased: its request_id stays spent, so a replayed upload never stores the
        # photo again. The tombstone is the answer, whatever was sent (docs/security.md).
        return existing, False
    if existing is not None:
        return _same_submission(
            existing, sha256=info.sha256, callback_url=callback_url, model_version=model_version, cohort=cohort, labels=labels
        ), False
    # Checked against the version chosen above (asked for, routed, or active): the one that runs.
    _labels_check(version, labels)

    image_id = uuid.uuid4()
    key = _object_key("originals", image_id, info.extension)
    try:
        storage.storage_put(key=key, data=upload, length=size, content_type=info.content_type)
    except storage.StorageError as exc:
        logger.error("storing upload for %s failed: %s", request_id, exc)
        raise Unavailable("storage_unavailable", "The image could not be stored; try again.") from exc

    try:
        with transaction.atomic():
            if route is not None:
                # Routed again, under a share lock of the rollout row held until this commits:
                # a rollback that committed since the first read is seen (the job goes to the
                # active version, outside the rollout), and one that comes now waits for this job.
                route = rollout_route(client_id=client.id, cohort=cohort, locked=True)
                routed = route.version if route is not None else detector_version_for_job(requested=None)
                if routed.id != version.id:
                    version = routed
                    _labels_check(version, labels)
            image = Image.objects.create(
                id=image_id,
                client=client,
                request_id=request_id,
                # The X-Request-ID of the request making it (api.middleware): the workers' log
                # lines about this job carry it too.
                http_request_id=log_context_get("http_request_id"),
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
                rollout=route.rollout if route else None,
                variant=route.variant if route else "",
                cohort=cohort,
                labels=labels,
            )
            if route is not None:
                _shadow_run_create(image, route.rollout, served=route.variant)
            # The worker must never see an id whose row is not committed.
            transaction.on_commit(lambda: image_job_enqueue(image_id=image_id))
    except IntegrityError:
        # The same request_id raced in from a concurrent request and won.
        _delete_quietly(key)
        existing = Image.objects.get(client=client, request_id=request_id)
        return _same_submission(
            existing, sha256=info.sha256, callback_url=callback_url, model_version=model_version, cohort=cohort, labels=labels
        ), False
    except Exception:
        # No row, so no object either.
        _delete_quietly(key)
        raise
    return image, True


def _same_submission(
    existing: Image, *, sha256: str, callback_url: str, model_version: str, cohort: str, labels: Sequence[str]
) -> Image:
    other_version = bool(model_version) and model_version != existing.detector_version_id
    # The same labels in any order; none asked is "every label", a choice of its own.
    other_labels = set(labels) != set(existing.labels)
    if (
        existing.original_sha256 != sha256
        or existing.callback_url != callback_url
        or other_version
        or existing.cohort != cohort
        or other_labels
    ):
        raise Conflict(
            "request_id_conflict",
            "This request_id was already used for a different image, callback_url, model_version, cohort or labels.",
            field="request_id",
        )
    return existing


def _labels_asked(labels: Sequence[str]) -> list[str]:
    """The labels an upload asks to keep: label names, without repeats (first one first), at
    most MAX_LABELS."""
    labels = labels_unique(labels)
    bad = [label for label in labels if not label_valid(label)]
    if bad:
        raise DomainError("invalid", f"{bad[0]!r} is not a label name ({LABEL_PATTERN}).", field="labels")
    if len(labels) > MAX_LABELS:
        raise DomainError("too_many_labels", f"At most {MAX_LABELS} labels may be asked for; {len(labels)} were.", field="labels")
    return labels


def _labels_check(version, labels: Sequence[str]) -> None:
    """Refuse labels the job's version cannot return: asking for them would always come back empty."""
    unknown = [label for label in labels if label not in version.labels]
    if unknown:
        raise DomainError(
            "unsupported_label",
            f"{version.id} does not detect {', '.join(unknown)}; it returns {', '.join(version.labels)}.",
            field="labels",
        )


def _shadow_run_create(image: Image, rollout, *, served: str) -> ShadowRun | None:
    """The job's shadow run, when the rollout copies jobs served by ``served`` and samples this
    one: made with the job (same transaction), published once the job is over."""
    side = shadow_variant(rollout, served)
    if side is None or not shadow_sampled(rollout, image.id):
        return None
    version_id = rollout.candidate_id if side == Variant.CANDIDATE else rollout.baseline_id
    return ShadowRun.objects.create(job=image, rollout=rollout, detector_version_id=version_id, variant=side)


def image_job_enqueue(*, image_id: uuid.UUID) -> bool:
    """Publish the detect -> deliver chain for a committed job and record it. A broker outage
    is logged, not raised: the job stays queued, unpublished, for the sweeper to publish."""
    try:
        _publish_chain(image_id)
    except Exception:
        logger.exception("could not enqueue job %s; the sweeper will retry", image_id)
        return False
    with transaction.atomic():
        _commit_without_flush()
        Image.objects.filter(id=image_id).update(
            enqueued_at=timezone.now(), enqueue_count=F("enqueue_count") + 1, updated_at=timezone.now()
        )
    return True


def _commit_without_flush() -> None:
    """Let the transaction begun just now commit without waiting for its write-ahead log to reach
    the disk (PostgreSQL; the next flush, a fraction of a second later, takes it). For records a
    crash may lose at no cost, such as the publish record above: without it the sweeper publishes
    the job again and its worker skips the copy. An upload waits for one disk flush (its job's),
    not two. Does nothing inside an outer transaction, whose own commit must wait."""
    if connection.vendor == "postgresql" and connection.in_atomic_block and not connection.savepoint_ids:
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL synchronous_commit TO OFF")


def _publish_chain(image_id: uuid.UUID) -> None:
    """detect -> deliver for one job, published by task name (routed to their queues by
    CELERY_TASK_ROUTES)."""
    job = str(image_id)
    # ignore_result: nothing reads detect_faces' return value (the job lives in the database), and
    # without it the result backend (Redis) subscribes to every published task and unsubscribes again.
    (signature(DETECT_TASK, args=(job,), immutable=True) | signature(DELIVER_RESULT_TASK, args=(job,), immutable=True)).apply_async(ignore_result=True)


def _delete_quietly(key: str) -> None:
    try:
        storage.storage_delete(key=key)
    except storage.StorageError:
        logger.exception("could not delete orphan object %s", key)


# --- Detection --------------------------------------------------------------------------------


@dataclass(frozen=True)
class FaceData:
    """A detection (a face, or another object: ``label``) in integer pixel coordinates, ready to
    store."""

    x: int
    y: int
    width: int
    height: int
    confidence: float
    landmarks: dict[str, list[float]]
    label: str = FACE


def image_job_start(*, image_id: uuid.UUID, redelivered: bool = False, attempt: int | None = None) -> Image | None:
    """Move a job to processing. Returns None when there is no work to do here: the job is
    terminal or unknown, another worker is running it, or it failed for too many attempts.

    ``redelivered`` is the broker's flag: the message was handed out before and not acknowledged,
    so the worker that had it died and this one takes over. ``attempt`` is given by a task's own
    retry after a transient error (JobInterrupted): the attempt it ran as. While the job is still
    at that attempt nobody else started it, so the retry resumes it; it did not crash, so it is
    not counted against MAX_DETECT_ATTEMPTS.
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
            resumed = attempt is not None and image.attempts == attempt
            if not (redelivered or resumed or _processing_is_stale(image)):
                # A second copy of the message (the sweeper re-published it) while the first runs.
                logger.info("job %s is being processed elsewhere; skipping this copy", image_id)
                return None
            if not resumed and image.attempts >= MAX_DETECT_ATTEMPTS:
                _fail(image, "too_many_attempts", f"Detection was started {image.attempts} times without finishing.")
                return None
        image.status = JobStatus.PROCESSING
        image.attempts += 1
        image.started_at = timezone.now()
        image.save(update_fields=["status", "attempts", "started_at", "updated_at"])
        metrics.job_started(image)
        return image


def _processing_is_stale(image: Image) -> bool:
    # Past the hard time limit the worker that started it cannot still be running it.
    deadline = timezone.now() - dt.timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT + 30)
    return image.started_at is None or image.started_at < deadline


def image_job_complete(
    *,
    image_id: uuid.UUID,
    faces: Sequence[FaceData],
    model_version: str,
    width: int,
    height: int,
    detection_ms: int | None = None,
    detector_cold: bool = False,
    detection_cpu_ms: int | None = None,
) -> bool:
    """Record the detections of a processing job (each marked with the job's detector version
    and its label), replacing any from an earlier attempt, and mark it completed, with how many
    are faces, how long the detector took and whether it was loaded for this job. Returns False
    (and changes nothing) if the job is not processing."""
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
                label=face.label,
            )
            for index, face in enumerate(faces)
        )
        image.status = JobStatus.COMPLETED
        image.model_version = model_version
        image.width, image.height = width, height
        image.face_count = sum(1 for face in faces if face.label == FACE)
        image.detection_ms, image.detector_cold = detection_ms, detector_cold
        image.detection_cpu_ms = detection_cpu_ms
        image.error_code = image.error_message = ""
        image.finished_at = timezone.now()
        image.save()
        transaction.on_commit(lambda: metrics.job_finished(image))  # once, and only if it stuck
        return True


def _fail(image: Image, code: str, message: str) -> None:
    image.status = JobStatus.FAILED
    image.error_code = code
    image.error_message = message[:2000]
    image.finished_at = timezone.now()
    image.save(update_fields=["status", "error_code", "error_message", "finished_at", "updated_at"])
    transaction.on_commit(lambda: metrics.job_finished(image))  # once, and only if it stuck
    logger.warning("job %s failed: %s: %s", image.id, code, message)


def image_job_fail(*, image_id: uuid.UUID, code: str, message: str) -> bool:
    """Mark a job failed with an error code. Returns False if it was already terminal."""
    with transaction.atomic():
        image = Image.objects.select_for_update().filter(id=image_id).first()
        if image is None or image.status in TERMINAL_STATUSES:
            return False
        _fail(image, code, message)
        return True


def _detector_for(version) -> tuple:
    """(detector, cold): the version's loaded detector, and whether it was loaded just now for
    this run (a cold start, which latency figures leave out). Raises WeightsMismatch,
    UnknownDetector or DetectorUnavailable."""
    return engines.acquire(detector_spec(version), device=settings.DETECTOR_DEVICE)


def _detector_failure(exc: Exception) -> str:
    """The error code of a detector that could not be had (its details are for the log)."""
    if isinstance(exc, ArtifactInvalid):
        return "model_artifact_invalid"
    return "model_weights_mismatch" if isinstance(exc, WeightsMismatch) else "detector_unavailable"


def _detect_timed(detector, rgb) -> tuple[list, int, int]:
    """The detections, how long the detector took and the CPU time it used (process_time counts
    every thread of this process: torch's too), in whole milliseconds."""
    started, cpu_started = time.monotonic(), time.process_time()
    detections = detector.detect(rgb)
    return detections, int(round((time.monotonic() - started) * 1000)), int(round((time.process_time() - cpu_started) * 1000))


def detections_kept(detections: Sequence, labels: Sequence[str]) -> list:
    """The detections whose label is one of ``labels`` (empty: all of them)."""
    if not labels:
        return list(detections)
    return [det for det in detections if det.label in labels]


def faces_from_detections(detections: Sequence, *, width: int, height: int) -> list[FaceData]:
    """Round detector output to whole pixels inside the image, most confident first (a stable
    sort: ties keep the detector's order); landmarks keep one decimal."""
    faces = []
    for det in sorted(detections, key=lambda det: -det.confidence):
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
                label=det.label,
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
    "model_artifact_invalid": "The detector version's model file cannot be run; the operators have been told.",
}


def image_job_detect(*, image_id: uuid.UUID, redelivered: bool = False, attempt: int | None = None) -> None:
    """Run detection for a job: load the photo, orient it, detect, store the faces.

    Permanent problems (an undecodable photo, a detector that cannot load) fail the job at once.
    Transient ones (storage.StorageError, database errors) propagate for the task to retry: as
    they are before the job was started, as JobInterrupted (caused by them) after it.
    ``attempt``: see image_job_start.
    """
    image = image_job_start(image_id=image_id, redelivered=redelivered, attempt=attempt)
    if image is None:
        return
    try:
        _image_job_detect_started(image)
    except storage.ObjectNotFound:
        raise
    except (storage.StorageError, OperationalError, InterfaceError) as exc:
        raise JobInterrupted(attempt=image.attempts) from exc


def _image_job_detect_started(image: Image) -> None:
    image_id = image.id
    data = storage.storage_get(key=image.original_key)
    try:
        rgb = image_decode_rgb(data)
    except ImageRejected as exc:
        image_job_fail(image_id=image_id, code=exc.code, message=exc.message)
        return
    try:
        detector, cold = _detector_for(image.detector_version)
    except (WeightsMismatch, UnknownDetector, DetectorUnavailable) as exc:
        code = _detector_failure(exc)
        logger.exception("job %s: detector %s cannot run here (%s)", image_id, image.detector_version_id, code)
        image_job_fail(image_id=image_id, code=code, message=JOB_ERROR_MESSAGES[code])
        return
    with metrics.detection_timed(model_version=image.detector_version_id, variant=image.variant):
        detections, elapsed_ms, cpu_ms = _detect_timed(detector, rgb)
    found = len(detections)
    detections = detections_kept(detections, image.labels)
    logger.info(
        "job %s: %d detections (%d kept) with %s in %d ms%s",
        image_id, found, len(detections), detector.model_version, elapsed_ms, " (cold)" if cold else "",
    )
    image_job_complete(
        image_id=image_id,
        faces=faces_from_detections(detections, width=rgb.width, height=rgb.height),
        model_version=detector.model_version,
        width=rgb.width,
        height=rgb.height,
        detection_ms=elapsed_ms,
        detector_cold=cold,
        detection_cpu_ms=cpu_ms,
    )


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
    with transaction.atomic():
        image = Image.objects.select_for_update().get(id=image_id)
        # An erased job calls back nothing: its pending deliveries were cancelled (docs/security.md).
        if not image.callback_url or image.status not in TERMINAL_STATUSES or image.status == JobStatus.DELETED:
            return None
        existing = image.deliveries.order_by("created_at").first()
        return existing or _callback_delivery_create(image_id=image_id)


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
      after it has already started: the queue, first in first out, moved past it, so its message
      is gone (a task that acked it unmoved);
    - queued long after publishing (the message was lost and nothing else moves), after
      JOB_QUEUED_TIMEOUT, the last resort;
    - processing past the hard time limit (the worker vanished and the message with it).
    Each is re-published, at most JOB_MAX_ENQUEUES times in all; then it fails with "stuck".
    A copy of a job that is in fact still waiting costs nothing but a message: the worker that
    takes the second copy finds the job started, or finished, and skips it.
    """
    now = timezone.now()
    stuck = (
        Q(status=JobStatus.QUEUED, enqueued_at__isnull=True, created_at__lt=now - dt.timedelta(seconds=settings.JOB_UNPUBLISHED_GRACE))
        | Q(status=JobStatus.QUEUED, enqueued_at__lt=now - dt.timedelta(seconds=settings.JOB_QUEUED_TIMEOUT))
        | Q(status=JobStatus.PROCESSING, started_at__lt=now - dt.timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT + 30))
    )
    overtaken_before = _latest_started_publish(now)
    if overtaken_before is not None:
        quiet_since = now - dt.timedelta(seconds=settings.JOB_QUEUED_STUCK)
        stuck |= Q(
            status=JobStatus.QUEUED,
            enqueued_at__lt=min(overtaken_before, quiet_since),
            updated_at__lt=quiet_since,
        )
    counts = {"republished": 0, "failed": 0}
    for image_id, enqueue_count in Image.objects.filter(stuck).values_list("id", "enqueue_count")[:500]:
        if enqueue_count >= settings.JOB_MAX_ENQUEUES:
            if image_job_fail(image_id=image_id, code="stuck", message=f"Published {enqueue_count} times without finishing."):
                counts["failed"] += 1
                # Its detection task will not run again to publish them.
                image_job_shadows_enqueue(image_id=image_id)
        elif image_job_enqueue(image_id=image_id):
            counts["republished"] += 1
    if any(counts.values()):
        logger.warning("sweeper: %s", counts)
    return counts


def _latest_started_publish(now: dt.datetime) -> dt.datetime | None:
    """The latest publish (enqueued_at: the queue's own, never a retry's) of a job that a worker
    has started, among the jobs made within JOB_QUEUED_TIMEOUT (the (status, created_at) index
    bounds the scan). The detect queue is first in, first out: a job published before it and
    still queued was skipped over, its message gone."""
    return (
        Image.objects.filter(
            status__in=(JobStatus.PROCESSING, *TERMINAL_STATUSES),
            created_at__gte=now - dt.timedelta(seconds=settings.JOB_QUEUED_TIMEOUT),
            started_at__isnull=False,
        ).aggregate(latest=Max("enqueued_at"))["latest"]
    )


def shadow_runs_sweep() -> dict[str, int]:
    """Publish the shadow runs that would otherwise wait forever (Celery beat calls this): queued
    runs of a finished job whose message was never published (the broker was down when the job
    ended, or the message went to the dead-letter queue), after JOB_UNPUBLISHED_GRACE, or was
    published JOB_QUEUED_TIMEOUT ago. At most JOB_MAX_ENQUEUES times; then the run fails with
    "stuck" (the job itself is never touched)."""
    now = timezone.now()
    grace = now - dt.timedelta(seconds=settings.JOB_UNPUBLISHED_GRACE)
    stuck = ShadowRun.objects.filter(status=ShadowStatus.QUEUED, job__status__in=TERMINAL_STATUSES).filter(
        Q(enqueued_at__isnull=True, job__finished_at__lt=grace)
        | Q(enqueued_at__lt=now - dt.timedelta(seconds=settings.JOB_QUEUED_TIMEOUT))
    )
    counts = {"shadows_republished": 0, "shadows_failed": 0}
    for run_id, enqueue_count in stuck.values_list("id", "enqueue_count")[:500]:
        if enqueue_count >= settings.JOB_MAX_ENQUEUES:
            counts["shadows_failed"] += shadow_run_fail(shadow_run_id=run_id, code="stuck")
        elif _shadow_run_publish(run_id):
            counts["shadows_republished"] += 1
    if any(counts.values()):
        logger.warning("sweeper: %s", counts)
    return counts


def _shadow_run_publish(run_id: int) -> bool:
    """Publish one shadow run and record it. A broker outage is logged, not raised: the run
    stays unpublished, for the sweeper."""
    try:
        signature(SHADOW_DETECT_TASK, args=(run_id,)).apply_async()
    except Exception:
        logger.exception("could not publish shadow run %s; the sweeper will retry", run_id)
        return False
    try:
        ShadowRun.objects.filter(id=run_id).update(enqueued_at=timezone.now(), enqueue_count=F("enqueue_count") + 1)
    except (OperationalError, InterfaceError):
        # Published all the same; at worst the sweeper publishes it again and one copy skips.
        logger.warning("shadow run %s published but not recorded (database unavailable)", run_id)
    return True


# --- Dead letters ------------------------------------------------------------------------------------


def dead_letter_record(
    *, task: str, args: Sequence = (), kwargs: dict | None = None, task_id: str = "", retries: int = 0, error: str = "", died_at: dt.datetime | None = None
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


# --- Shadow runs (rollouts) ------------------------------------------------------------------------


def image_job_shadows_enqueue(*, image_id: uuid.UUID) -> int:
    """Publish the queued shadow runs of a job whose own detection is over (completed or
    failed), so that the client's job always goes first. Returns how many were published.

    Called by the detection task after every attempt, a redelivered one too (so a worker that
    died between finishing the job and publishing loses nothing); a run published twice is
    detected once (shadow_run_detect checks its state). Never raises: a shadow run must not
    hold up the job's callback, which is chained after detection.
    """
    try:
        # One query (every job passes here, most of them with no shadow run): the queued runs of
        # the job, if the job is over.
        run_ids = list(
            ShadowRun.objects.filter(job_id=image_id, job__status__in=TERMINAL_STATUSES, status=ShadowStatus.QUEUED).values_list("id", flat=True)
        )
        for run_id in run_ids:
            # By name, after commit: the worker must never see a run whose row it cannot read. A
            # publish that fails leaves the run unpublished, for the sweeper (shadow_runs_sweep).
            transaction.on_commit(lambda run_id=run_id: _shadow_run_publish(run_id), robust=True)
    except Exception:
        logger.exception("could not publish the shadow runs of job %s", image_id)
        return 0
    return len(run_ids)


def shadow_run_detect(*, shadow_run_id: int, redelivered: bool = False) -> None:
    """Run a shadow run's version on its job's photo and store the faces, in the shape the API
    shows faces, with the detection time and the agreement with the job's own faces (null when
    the job failed: there is nothing to compare with). Nothing reaches the client.

    Does nothing unless the run is queued. Permanent problems fail the run; transient ones
    (storage, database) propagate for the task to retry. Every start is counted; a message
    ``redelivered`` (the worker that had it died) to a run started MAX_DETECT_ATTEMPTS times
    fails it with too_many_attempts instead: a photo that kills workers must not loop forever.
    """
    with transaction.atomic():
        run = ShadowRun.objects.select_for_update(of=("self",)).select_related("job", "detector_version").filter(id=shadow_run_id).first()
        if run is None or run.status != ShadowStatus.QUEUED:
            logger.info("shadow run %s is not queued; skipping", shadow_run_id)
            return
        if redelivered and run.attempts >= MAX_DETECT_ATTEMPTS:
            run.status = ShadowStatus.FAILED
            run.error_code = "too_many_attempts"
            run.finished_at = timezone.now()
            run.save(update_fields=["status", "error_code", "finished_at"])
            logger.warning("shadow run %s failed: started %d times without finishing", shadow_run_id, run.attempts)
            return
        run.attempts += 1
        run.save(update_fields=["attempts"])
    if run.job.error_code == "too_many_attempts":
        # Workers died on this photo again and again: another run would only kill one more (and
        # a redelivered shadow message has no attempt limit of its own).
        shadow_run_fail(shadow_run_id=shadow_run_id, code="too_many_attempts")
        return
    try:
        data = storage.storage_get(key=run.job.original_key)
    except storage.ObjectNotFound:
        shadow_run_fail(shadow_run_id=shadow_run_id, code="original_missing")
        return
    try:
        rgb = image_decode_rgb(data)
    except ImageRejected as exc:
        shadow_run_fail(shadow_run_id=shadow_run_id, code=exc.code)
        return
    try:
        detector, cold = _detector_for(run.detector_version)
    except (WeightsMismatch, UnknownDetector, DetectorUnavailable) as exc:
        logger.warning("shadow run %s: detector %s cannot run here", shadow_run_id, run.detector_version_id, exc_info=True)
        shadow_run_fail(shadow_run_id=shadow_run_id, code=_detector_failure(exc))
        return
    with metrics.detection_timed(model_version=run.detector_version_id, variant=run.variant):
        detections, elapsed_ms, _cpu_ms = _detect_timed(detector, rgb)
    # The job's labels apply to its shadow too: the two answer the same question.
    faces = [
        detection_representation(
            label=f.label, x=f.x, y=f.y, width=f.width, height=f.height, confidence=f.confidence, landmarks=f.landmarks
        )
        for f in faces_from_detections(detections_kept(detections, run.job.labels), width=rgb.width, height=rgb.height)
    ]
    with transaction.atomic():
        run = ShadowRun.objects.select_for_update().get(id=shadow_run_id)
        if run.status != ShadowStatus.QUEUED:  # another copy of the message finished first
            return
        job = Image.objects.get(id=run.job_id)
        score = None
        if job.status == JobStatus.COMPLETED:
            job_rows = list(job.faces.all())
            job_side = ([(f.box_x, f.box_y, f.box_width, f.box_height) for f in job_rows], [f.label for f in job_rows])
            own_side = (boxes_of(faces), labels_of(faces))
            # The candidate's detections against the baseline's, whichever side this run plays; a
            # detection matches only one of its own label.
            (candidate, candidate_labels), (baseline, baseline_labels) = (
                (own_side, job_side) if run.variant == Variant.CANDIDATE else (job_side, own_side)
            )
            score = agreement(candidate, baseline, candidate_labels=candidate_labels, baseline_labels=baseline_labels)
        run.status = ShadowStatus.COMPLETED
        run.faces = faces
        run.face_count = sum(1 for face in faces if face["label"] == FACE)
        run.detection_ms, run.detector_cold = elapsed_ms, cold
        run.agreement = score
        run.error_code = ""
        run.finished_at = timezone.now()
        run.save()
    logger.info("shadow run %s (%s %s) of job %s: %d faces in %d ms, agreement %s", run.id, run.variant, run.detector_version_id, run.job_id, len(faces), elapsed_ms, score)


def shadow_run_fail(*, shadow_run_id: int, code: str) -> bool:
    """Mark a queued shadow run failed (the job itself is untouched). Returns False if the run
    is gone or was already finished."""
    with transaction.atomic():
        run = ShadowRun.objects.select_for_update().filter(id=shadow_run_id).first()
        if run is None or run.status != ShadowStatus.QUEUED:
            return False
        run.status = ShadowStatus.FAILED
        run.error_code = code[:64]
        run.finished_at = timezone.now()
        run.save(update_fields=["status", "error_code", "finished_at"])
    logger.warning("shadow run %s failed: %s", shadow_run_id, code)
    return True
