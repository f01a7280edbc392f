"""Shadow runs (rollouts): a job's photo run on another version after the job itself, for
agreement figures; nothing reaches the client."""

import datetime as dt
import logging
import uuid

from celery import signature
from django.conf import settings
from django.db import (
    InterfaceError,
    OperationalError,
    transaction,
)
from django.db.models import F, Q
from django.utils import timezone

from detection.compare import agreement, boxes_of, labels_of

# The label rule; api/serializers.py reads it from here (api does not import detection).
from detection.labels import (
    FACE,
)
from rollouts.models import Variant
from storage import s3 as storage

from ..models import (
    TERMINAL_STATUSES,
    Image,
    JobStatus,
    ShadowRun,
    ShadowStatus,
)
from ..representation import detection_representation
from .detection import (
    MAX_DETECT_ATTEMPTS,
    DetectionRefused,
    faces_from_detections,
    photo_detect,
)

logger = logging.getLogger(__name__)


# The Celery task (workers/tasks.py) that runs a shadow run, by name.
SHADOW_DETECT_TASK = "workers.tasks.shadow_detect"


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
            ShadowRun.objects.filter(job_id=image_id, job__status__in=TERMINAL_STATUSES, status=ShadowStatus.QUEUED).values_list(
                "id", flat=True
            )
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
        found = photo_detect(key=run.job.original_key, version=run.detector_version, variant=run.variant, labels=run.job.labels)
    except storage.ObjectNotFound:
        shadow_run_fail(shadow_run_id=shadow_run_id, code="original_missing")
        return
    except DetectionRefused as exc:
        if exc.detector:
            logger.warning("shadow run %s: detector %s cannot run here", shadow_run_id, run.detector_version_id, exc_info=exc.__cause__)
        shadow_run_fail(shadow_run_id=shadow_run_id, code=exc.code)
        return
    # The job's labels apply to its shadow too: the two answer the same question.
    elapsed_ms, cold = found.elapsed_ms, found.cold
    faces = [
        detection_representation(
            label=f.label, x=f.x, y=f.y, width=f.width, height=f.height, confidence=f.confidence, landmarks=f.landmarks
        )
        for f in faces_from_detections(found.detections, width=found.width, height=found.height)
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
    logger.info(
        "shadow run %s (%s %s) of job %s: %d faces in %d ms, agreement %s",
        run.id,
        run.variant,
        run.detector_version_id,
        run.job_id,
        len(faces),
        elapsed_ms,
        score,
    )


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


def shadow_runs_sweep() -> dict[str, int]:
    """Publish the shadow runs that would otherwise wait forever (Celery beat calls this): queued
    runs of a finished job whose message was never published (the broker was down when the job
    ended, or the message went to the dead-letter queue), after JOB_UNPUBLISHED_GRACE, or was
    published JOB_QUEUED_TIMEOUT ago. At most JOB_MAX_ENQUEUES times; then the run fails with
    "stuck" (the job itself is never touched)."""
    now = timezone.now()
    grace = now - dt.timedelta(seconds=settings.JOB_UNPUBLISHED_GRACE)
    stuck = ShadowRun.objects.filter(status=ShadowStatus.QUEUED, job__status__in=TERMINAL_STATUSES).filter(
        Q(enqueued_at__isnull=True, job__finished_at__lt=grace) | Q(enqueued_at__lt=now - dt.timedelta(seconds=settings.JOB_QUEUED_TIMEOUT))
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
