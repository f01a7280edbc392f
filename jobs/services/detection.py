"""The detection state machine of a job: queued -> processing -> completed | failed. Every change
locks the row and checks the current state first, so a task delivered twice (acks_late
redelivery, a retry, the sweeper) never applies twice. Also the one detect pipeline a job and a
shadow run share (photo_detect)."""

import datetime as dt
import functools
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from django.conf import settings
from django.db import (
    InterfaceError,
    OperationalError,
    connection,
    transaction,
)
from django.utils import timezone

from callbacks.services import Claim, callback_delivery_create_claimed
from core import metrics
from core.logging import log_context_add
from core.rows import columns, fields, hand_written_sql, model_from_row
from detection import DetectorUnavailable, UnknownDetector, engines
from detection.base import ArtifactInvalid

# The label rule; api/serializers.py reads it from here (api does not import detection).
from detection.labels import (
    FACE,
)
from detection.weights import WeightsMismatch
from registry.models import DetectorVersion
from registry.services import detector_spec
from storage import s3 as storage

from ..imaging import ImageRejected, image_decode_rgb
from ..logcontext import job_log_context
from ..models import (
    TERMINAL_STATUSES,
    Face,
    Image,
    JobStatus,
)
from ..representation import image_representation
from .annotation import annotation_discard, annotation_store
from .fetching import FetchFailed, image_job_fetch
from .lifecycle import image_job_expire_if_due, job_ended, shadow_runs_abandon

logger = logging.getLogger(__name__)


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

    def row(self, **fields) -> Face:
        """The unsaved Face row of this detection (``fields``: its image, version and index).
        The annotation draws from these too, so that it is the image drawn from stored rows."""
        return Face(
            box_x=self.x,
            box_y=self.y,
            box_width=self.width,
            box_height=self.height,
            confidence=self.confidence,
            landmarks=self.landmarks,
            label=self.label,
            **fields,
        )


def image_job_start(*, image_id: uuid.UUID, redelivered: bool = False, attempt: int | None = None) -> Image | None:
    """Move a job to processing. Returns None when there is no work to do here: the job is
    terminal or unknown, another worker is running it, or it failed for too many attempts.

    ``redelivered`` is the broker's flag: the message was handed out before and not acknowledged,
    so the worker that had it died and this one takes over. ``attempt`` is given by a task's own
    retry after a transient error (JobInterrupted): the attempt it ran as. While the job is still
    at that attempt nobody else started it, so the retry resumes it; it did not crash, so it is
    not counted against MAX_DETECT_ATTEMPTS.
    """
    image = _image_job_start_queued(image_id)
    if image is not None:
        log_context_add(keep_existing=True, **job_log_context(image))
        metrics.job_started(image)
        return image
    # Anything else (not queued, past its expiry, processing elsewhere or resumed, unknown): the
    # row locked and looked at.
    with transaction.atomic():
        image = Image.objects.select_for_update(of=("self",)).select_related("detector_version").filter(id=image_id).first()
        if image is None:
            logger.warning("job %s does not exist; skipping", image_id)
            return None
        # The job's fields on the running task's log lines from here on, from the row read here
        # (no query of their own; outside a task's or request's scope this adds nothing).
        log_context_add(keep_existing=True, **job_log_context(image))
        if image.status in TERMINAL_STATUSES:
            # Canceled or expired ones included: their callback is the chained delivery's.
            logger.info("job %s is already %s; skipping", image_id, image.status)
            return None
        if image_job_expire_if_due(image=image):
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


@functools.cache
def _start_statement() -> str:
    table = Image._meta.db_table
    versions = DetectorVersion._meta.db_table
    return f"""
        WITH started AS (
            UPDATE {table} SET status = %(processing)s, attempts = attempts + 1, started_at = %(now)s, updated_at = %(now)s
            WHERE id = %(id)s AND status = %(queued)s AND (expires_at IS NULL OR expires_at > %(now)s)
            RETURNING *
        )
        SELECT {columns(Image, "started")}, {columns(DetectorVersion, "v")}
        FROM started JOIN {versions} v ON v.id = started.detector_version_id
    """


def _image_job_start_queued(image_id: uuid.UUID) -> Image | None:
    """The common start in one statement (its own transaction): a queued job whose expiry has
    not passed, moved to processing and read back with its detector version; None otherwise.
    The conditional UPDATE takes the row's lock as the locked read would: of two copies of one
    message, one moves it and the other finds it processing."""
    if not hand_written_sql():
        return None  # the locked read does it all
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(_start_statement(), {"id": image_id, "now": now, "queued": JobStatus.QUEUED, "processing": JobStatus.PROCESSING})
        row = cursor.fetchone()
    if row is None:
        return None
    width = len(fields(Image))
    image = model_from_row(Image, row[:width])
    Image.detector_version.field.set_cached_value(image, model_from_row(DetectorVersion, row[width:]))
    return image


def _processing_is_stale(image: Image) -> bool:
    # Past the hard time limit the worker that started it cannot still be running it.
    deadline = timezone.now() - dt.timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT + 30)
    return image.started_at is None or image.started_at < deadline


@functools.cache
def _completion_statement() -> str:
    table = Image._meta.db_table
    return f"""
        UPDATE {table} SET
            status = %(completed)s, model_version = %(model_version)s, width = %(width)s, height = %(height)s,
            face_count = %(face_count)s, detection_ms = %(detection_ms)s, detector_cold = %(detector_cold)s,
            detection_cpu_ms = %(detection_cpu_ms)s,
            annotated_key = CASE WHEN %(annotated_key)s = '' THEN annotated_key ELSE %(annotated_key)s END,
            error_code = '', error_message = '', finished_at = %(now)s, updated_at = %(now)s
        WHERE id = %(id)s AND status = %(processing)s
        RETURNING {columns(Image, table)}
    """


def _image_job_completed(image_id: uuid.UUID, **values) -> Image | None:
    """A processing job moved to completed with ``values`` (an empty annotated_key keeps the
    one it has), read back; None when it is not processing (or not there)."""
    now = timezone.now()
    if not hand_written_sql():
        # The same with the ORM: the row locked and looked at, then written.
        image = Image.objects.select_for_update().filter(id=image_id).first()
        if image is None or image.status != JobStatus.PROCESSING:
            return None
        annotated_key = values.pop("annotated_key")
        for name, value in values.items():
            setattr(image, name, value)
        image.annotated_key = annotated_key or image.annotated_key
        image.status, image.error_code, image.error_message, image.finished_at = JobStatus.COMPLETED, "", "", now
        image.save(update_fields=["status", "error_code", "error_message", "finished_at", "annotated_key", "updated_at", *values])
        return image
    params = {"id": image_id, "now": now, "completed": JobStatus.COMPLETED, "processing": JobStatus.PROCESSING, **values}
    with connection.cursor() as cursor:
        cursor.execute(_completion_statement(), params)
        row = cursor.fetchone()
    return None if row is None else model_from_row(Image, row)


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
    annotated_key: str = "",
    callback_claimed: Callable[[Claim], None] | None = None,
) -> bool:
    """Record the detections of a processing job (each marked with the job's detector version
    and its label), replacing any from an earlier attempt, and mark it completed, with how many
    are faces, how long the detector took, whether it was loaded for this job and the key of its
    annotated image when one was stored already. Returns False (and changes nothing) if the job
    is not processing.

    ``callback_claimed``: given by a detect task that holds a free sending thread. A job with a
    callback_url and its annotated image then gets its callback delivery in the same transaction,
    leased for its first try (the body rendered from the rows written here, as the delivery task
    would render them after reading them back), and the Claim is handed to ``callback_claimed``
    once committed; an annotated job without a callback_url hands it None (nothing to send).
    Not called: the delivery task is still needed (no drawing, the receiver waits its turn). A
    processing job has no delivery yet (deliveries are made for finished jobs only), so none is
    made twice."""
    with transaction.atomic():
        # The row moved to completed and read back in one statement (the lock a read would take
        # is the UPDATE's), then its detections: one round trip fewer than read, lock, write.
        image = _image_job_completed(
            image_id,
            model_version=model_version,
            width=width,
            height=height,
            face_count=sum(1 for face in faces if face.label == FACE),
            detection_ms=detection_ms,
            detector_cold=detector_cold,
            detection_cpu_ms=detection_cpu_ms,
            annotated_key=annotated_key,
        )
        if image is None:
            status = Image.objects.filter(id=image_id).values_list("status", flat=True).first()
            if status is None:
                raise Image.DoesNotExist(f"job {image_id} does not exist")
            logger.info("job %s is %s, not processing; not completing it", image_id, status)
            return False
        if image.attempts > 1:
            # Detections are written only with the completion, in this transaction: a first
            # attempt has none to replace (a round trip saved on every job).
            image.faces.all().delete()
        rows = Face.objects.bulk_create(
            [face.row(image=image, detector_version_id=image.detector_version_id, index=index) for index, face in enumerate(faces)]
        )
        transaction.on_commit(lambda: metrics.job_finished(image))  # once, and only if it stuck
        job_ended(image)
        if callback_claimed is not None and image.annotated_key:
            # Nothing to call back is settled here too (None): no second look at the job.
            claim = _callback_delivery_with_completion(image, rows) if image.callback_url else None
            if claim is not None or not image.callback_url:
                transaction.on_commit(lambda: callback_claimed(claim))
        return True


def _callback_delivery_with_completion(image: Image, faces: list[Face]) -> Claim | None:
    # The job's rows as written (its detections; no deliveries yet: it was processing), rendered
    # as jobs.services.delivery renders the row it reads back. None: its receiver waits its turn.
    # In a savepoint: should it fail, the job still completes, and the chained delivery task
    # (left in place: no claim was handed over) makes the delivery as before.
    image._prefetched_objects_cache = {"faces": faces, "deliveries": []}
    try:
        with transaction.atomic():
            _, claim = callback_delivery_create_claimed(
                image_id=image.id,
                url=image.callback_url,
                render=lambda delivery: image_representation(image, delivery=delivery),
                claim=True,
            )
    except Exception:
        logger.exception("job %s: could not make its callback delivery with the completion; the delivery task will", image.id)
        claim = None
    finally:
        image._prefetched_objects_cache = {}
    return claim


def _fail(image: Image, code: str, message: str) -> None:
    image.status = JobStatus.FAILED
    image.error_code = code
    image.error_message = message[:2000]
    image.finished_at = timezone.now()
    image.save(update_fields=["status", "error_code", "error_message", "finished_at", "updated_at"])
    transaction.on_commit(lambda: metrics.job_finished(image))  # once, and only if it stuck
    job_ended(image)
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


def image_job_detect(
    *,
    image_id: uuid.UUID,
    redelivered: bool = False,
    attempt: int | None = None,
    callback_claimed: Callable[[Claim], None] | None = None,
) -> Image | None:
    """Run detection for a job: load the photo, orient it, detect, store the faces. Returns the
    job's row as this attempt started it (None: it did not start here).

    Permanent problems (an undecodable photo, a detector that cannot load) fail the job at once.
    Transient ones (storage.StorageError, database errors) propagate for the task to retry: as
    they are before the job was started, as JobInterrupted (caused by them) after it.
    ``attempt``: see image_job_start. ``callback_claimed``: see image_job_complete.
    """
    image = image_job_start(image_id=image_id, redelivered=redelivered, attempt=attempt)
    if image is None:
        return None
    try:
        _image_job_detect_started(image, callback_claimed=callback_claimed)
    except storage.ObjectNotFound:
        raise
    except (storage.StorageError, OperationalError, InterfaceError) as exc:
        raise JobInterrupted(attempt=image.attempts) from exc
    return image


def _image_job_detect_started(image: Image, *, callback_claimed: Callable[[Claim], None] | None) -> None:
    try:
        # A job submitted by URL: its photo is fetched and stored first (once; a retry after
        # it is stored goes straight on).
        if not image_job_fetch(image=image):
            return
    except FetchFailed as exc:
        with transaction.atomic():
            if image_job_fail(image_id=image.id, code=exc.code, message=exc.message):
                shadow_runs_abandon(image_ids=[image.id], code=exc.code)
        return
    try:
        found = photo_detect(key=image.original_key, version=image.detector_version, variant=image.variant, labels=image.labels)
    except DetectionRefused as exc:
        if exc.detector:
            logger.error("job %s: detector %s cannot run here (%s)", image.id, image.detector_version_id, exc.code, exc_info=exc.__cause__)
        image_job_fail(image_id=image.id, code=exc.code, message=exc.message)
        return
    logger.info(
        "job %s: %d detections (%d kept) with %s in %d ms%s",
        image.id,
        found.found,
        len(found.detections),
        found.model_version,
        found.elapsed_ms,
        " (cold)" if found.cold else "",
    )
    faces = faces_from_detections(found.detections, width=found.width, height=found.height)
    # Drawn here, on the photo already decoded, and recorded with the faces: the deliverer then
    # only calls back (it draws only for a job that arrives without one).
    annotated_key = annotation_store(image=image, rgb=found.rgb, faces=faces)
    try:
        completed = image_job_complete(
            image_id=image.id,
            faces=faces,
            model_version=found.model_version,
            width=found.width,
            height=found.height,
            detection_ms=found.elapsed_ms,
            detector_cold=found.cold,
            detection_cpu_ms=found.cpu_ms,
            annotated_key=annotated_key,
            callback_claimed=callback_claimed,
        )
    except Exception:
        # The database away, say: the task is retried and draws again; should the job end
        # failed instead, no unrecorded drawing is left in the bucket.
        if annotated_key:
            _discard_quietly(image.id, annotated_key)
        raise
    if annotated_key and not completed:
        annotation_discard(image_id=image.id, key=annotated_key)


def _discard_quietly(image_id: uuid.UUID, key: str) -> None:
    try:
        annotation_discard(image_id=image_id, key=key)
    except Exception:  # the same outage: the drawing stays, as before this cleanup
        logger.warning("job %s: could not check or delete its unrecorded annotated image %s", image_id, key)


# --- The detect pipeline a job and a shadow run share ---------------------------------------------


class DetectionRefused(Exception):
    """A permanent reason a photo cannot be detected on a version: an undecodable photo
    (``detector`` False; ``code`` from the decoder) or a detector that cannot run here
    (``detector`` True). ``message`` is the client's fixed sentence; the cause is __cause__."""

    def __init__(self, code: str, message: str, *, detector: bool) -> None:
        super().__init__(code)
        self.code, self.message, self.detector = code, message, detector


@dataclass(frozen=True)
class PhotoDetections:
    """What one detection of a stored photo gave: the detections kept (by the job's labels), how
    many the detector found before that, the decoded size, and how it went."""

    detections: list
    found: int
    width: int
    height: int
    model_version: str
    cold: bool
    elapsed_ms: int
    cpu_ms: int
    # The decoded, upright photo the detector saw (the job draws its annotated image on it).
    rgb: object = field(default=None, repr=False, compare=False)


def photo_detect(*, key: str, version, variant: str, labels: Sequence[str]) -> PhotoDetections:
    """The stored photo at ``key`` read, decoded upright in RGB, and run through ``version``'s
    detector (timed, and counted per version and variant), keeping ``labels`` (empty: all).
    Raises DetectionRefused for what trying again cannot mend; storage errors (ObjectNotFound
    included) and database errors propagate for the caller to decide."""
    data = storage.storage_get(key=key)
    try:
        rgb = image_decode_rgb(data)
    except ImageRejected as exc:
        raise DetectionRefused(exc.code, exc.message, detector=False) from exc
    try:
        detector, cold = _detector_for(version)
    except (WeightsMismatch, UnknownDetector, DetectorUnavailable) as exc:
        code = _detector_failure(exc)
        raise DetectionRefused(code, JOB_ERROR_MESSAGES[code], detector=True) from exc
    with metrics.detection_timed(model_version=version.id, variant=variant):
        detections, elapsed_ms, cpu_ms = _detect_timed(detector, rgb)
    return PhotoDetections(
        detections=detections_kept(detections, labels),
        found=len(detections),
        width=rgb.width,
        height=rgb.height,
        model_version=detector.model_version,
        cold=cold,
        elapsed_ms=elapsed_ms,
        cpu_ms=cpu_ms,
        rgb=rgb,
    )
