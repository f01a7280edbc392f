"""The job's business logic. Views and tasks call these functions and nothing else writes a job.

Four stages, a module each: submission (checked, stored, recorded, published after commit),
detection (the state machine queued -> processing -> completed | failed, and the detect pipeline
a job and a shadow run share), delivery (annotation, the callback delivery, the sweeper and the
dead letters it hands back) and shadow runs (rollouts). Callers import from here; a test that
replaces a function patches it in the module that calls it (e.g. jobs.services.submission).
"""

# The label rule; api/serializers.py reads it from here (api does not import detection).
from detection.labels import LABEL_MAX_LENGTH, LABEL_PATTERN, MAX_LABELS

from ..keys import annotated_object_key
from .batches import (
    BatchItem,
    batch_cancel,
    batch_counts,
    batch_create,
    batch_finish,
    batch_get,
    batch_item_ended,
    batch_items,
    batch_results,
    batches_finish_sweep,
)
from .delivery import (
    dead_letter_record,
    image_job_annotate,
    image_job_callback_delivery,
    image_job_callback_delivery_claimed,
    image_job_callback_handoff,
    image_job_redeliver,
    image_job_requeue,
    image_jobs_sweep,
)
from .detection import (
    JOB_ERROR_MESSAGES,
    MAX_DETECT_ATTEMPTS,
    DetectionRefused,
    FaceData,
    JobInterrupted,
    PhotoDetections,
    faces_from_detections,
    image_job_complete,
    image_job_detect,
    image_job_fail,
    image_job_start,
    photo_detect,
)
from .fetching import FetchFailed, image_job_fetch
from .lifecycle import (
    JobNotCancelable,
    image_job_cancel,
    image_job_expire_if_due,
    image_jobs_cancel,
    image_jobs_expire_sweep,
    job_ended,
    job_ended_listen,
)
from .shadow import (
    SHADOW_DETECT_TASK,
    image_job_shadows_enqueue,
    shadow_run_detect,
    shadow_run_fail,
    shadow_runs_sweep,
)
from .submission import (
    DELIVER_RESULT_TASK,
    DETECT_TASK,
    image_job_create,
    image_job_enqueue,
)

__all__ = [
    "BatchItem",
    "batch_cancel",
    "batch_counts",
    "batch_create",
    "batch_finish",
    "batch_get",
    "batch_item_ended",
    "batch_items",
    "batch_results",
    "batches_finish_sweep",
    "DELIVER_RESULT_TASK",
    "DETECT_TASK",
    "JOB_ERROR_MESSAGES",
    "LABEL_MAX_LENGTH",
    "LABEL_PATTERN",
    "MAX_DETECT_ATTEMPTS",
    "MAX_LABELS",
    "SHADOW_DETECT_TASK",
    "DetectionRefused",
    "FetchFailed",
    "JobNotCancelable",
    "FaceData",
    "JobInterrupted",
    "PhotoDetections",
    "annotated_object_key",
    "dead_letter_record",
    "faces_from_detections",
    "image_job_annotate",
    "image_job_callback_delivery",
    "image_job_cancel",
    "image_job_callback_delivery_claimed",
    "image_job_callback_handoff",
    "image_job_complete",
    "image_job_create",
    "image_job_detect",
    "image_job_enqueue",
    "image_job_expire_if_due",
    "image_job_fetch",
    "image_job_fail",
    "image_job_redeliver",
    "image_job_requeue",
    "image_job_shadows_enqueue",
    "image_job_start",
    "image_jobs_cancel",
    "image_jobs_expire_sweep",
    "image_jobs_sweep",
    "job_ended",
    "job_ended_listen",
    "photo_detect",
    "shadow_run_detect",
    "shadow_run_fail",
    "shadow_runs_sweep",
]
