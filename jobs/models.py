"""One job, one row: an uploaded image, its detection state and its detections (faces, or
other objects for models with other labels)."""

import uuid
from typing import TYPE_CHECKING

from django.db import models

if TYPE_CHECKING:  # for the annotation only (callbacks names jobs.Image by string)
    from callbacks.models import CallbackDelivery


class JobStatus(models.TextChoices):
    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    # Erased on request (jobs/erasure.py): a tombstone of id, request_id and times; nothing runs on
    # it any more.
    DELETED = "deleted"
    # Ended before it started: by the client's cancel (an upload's or its batch's), or because it
    # had not started when its ``expires_at`` came. A job already detecting finishes instead.
    CANCELED = "canceled"
    EXPIRED = "expired"


TERMINAL_STATUSES = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.DELETED, JobStatus.CANCELED, JobStatus.EXPIRED)


class Batch(models.Model):
    """Many jobs submitted at once (``POST /api/v1/batches/``): each item is an ordinary Image
    row with its own request_id, version and callback; the batch adds one callback when the last
    item ends, and a results stream."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    client = models.ForeignKey("clients.ApiClient", on_delete=models.PROTECT, related_name="batches")
    callback_url = models.URLField(max_length=2048, blank=True)
    http_request_id = models.CharField(max_length=128, null=True, blank=True)
    item_count = models.PositiveIntegerField()
    expires_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    canceled_at = models.DateTimeField(null=True, blank=True)
    # Set once, when the last item reaches a terminal state (the batch callback is recorded then).
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "batches"

    def __str__(self) -> str:
        return f"batch {self.id} ({self.item_count} items)"

    @property
    def status(self) -> str:
        """running until its last item ended; then completed, or canceled if it was canceled."""
        if self.finished_at is None:
            return "running"
        return "canceled" if self.canceled_at is not None else "completed"


class Image(models.Model):
    """A detection job. Its status moves queued -> processing -> completed | failed, only
    through the functions in jobs/services.py, which check the current state first."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    client = models.ForeignKey("clients.ApiClient", on_delete=models.PROTECT, related_name="images")
    request_id = models.CharField(max_length=128, db_index=True)
    # The X-Request-ID of the HTTP request that made the job (api.middleware), so that the
    # workers' log lines about the job carry it (http_request_id). Null: not made over HTTP, or
    # made before it was recorded.
    http_request_id = models.CharField(max_length=128, null=True, blank=True)
    callback_url = models.URLField(max_length=2048, blank=True)
    # Submitted by reference (``image_url``): the worker fetches it into ``original_key`` before
    # detecting; until then original_size is 0 and original_sha256 empty.
    image_url = models.URLField(max_length=2048, blank=True)
    batch = models.ForeignKey(Batch, on_delete=models.SET_NULL, null=True, blank=True, related_name="items")
    # Not started by then: ends ``expired`` (``expires_in`` at submission).
    expires_at = models.DateTimeField(null=True, blank=True)

    # Object keys are chosen by the server; the client's filename is kept for operators only.
    original_filename = models.CharField(max_length=255, blank=True)
    original_key = models.CharField(max_length=512)
    original_content_type = models.CharField(max_length=64)
    original_size = models.PositiveBigIntegerField()
    # Tells a retried submission (same request_id, same photo) from a conflicting one.
    original_sha256 = models.CharField(max_length=64)
    annotated_key = models.CharField(max_length=512, blank=True)

    status = models.CharField(max_length=16, choices=JobStatus.choices, default=JobStatus.QUEUED, db_index=True)
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.TextField(blank=True)
    # How many times a worker started detection on this job (more than one: it was redelivered).
    attempts = models.PositiveIntegerField(default=0)
    # When the detect -> deliver chain was last published (null: never, the broker was down) and
    # how many times; the sweeper re-publishes jobs that are stuck, a bounded number of times.
    enqueued_at = models.DateTimeField(null=True, blank=True)
    enqueue_count = models.PositiveIntegerField(default=0)

    # The version that detects this job, fixed when it is accepted; model_version is its label,
    # recorded when the faces are.
    detector_version = models.ForeignKey("registry.DetectorVersion", on_delete=models.PROTECT, related_name="images")
    model_version = models.CharField(max_length=128, blank=True, db_index=True)
    width = models.PositiveIntegerField(null=True, blank=True)
    height = models.PositiveIntegerField(null=True, blank=True)
    # How many of its detections are faces (label "face"); the rows hold every detection kept.
    face_count = models.PositiveIntegerField(null=True, blank=True)
    # How long the detector itself took (ms), and whether it was loaded for this job (a cold
    # start, left out of latency figures).
    detection_ms = models.PositiveIntegerField(null=True, blank=True)
    detector_cold = models.BooleanField(default=False)
    # The CPU time the detector took (ms of time.process_time: every thread of the worker
    # process), for what detections cost (CPU-seconds per 1,000 on the dashboard). Null for jobs
    # detected before it was recorded.
    detection_cpu_ms = models.PositiveIntegerField(null=True, blank=True)

    # The rollout that routed this job, the side it got, and the cohort key it was routed by
    # (blank: routed by its client). Null outside a rollout, or when model_version was asked for.
    rollout = models.ForeignKey("rollouts.Rollout", on_delete=models.PROTECT, null=True, blank=True, related_name="jobs")
    variant = models.CharField(max_length=16, blank=True)
    cohort = models.CharField(max_length=128, blank=True)
    # The labels the upload asked to keep (deduplicated, in the order asked): detections with
    # other labels are dropped before they are stored. Empty: keep every label.
    labels = models.JSONField(default=list, blank=True)

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)
    # When retention (jobs/retention.py) deleted the photo and the annotated image from the store:
    # the API answers 410 for them from then on. Null: still kept (or never made).
    original_expired_at = models.DateTimeField(null=True, blank=True)
    annotated_expired_at = models.DateTimeField(null=True, blank=True)
    # When the job was erased on request (status deleted). Its object keys stay set until the
    # objects are gone from the store; retention retries what a failed erasure left.
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "api_image"  # the table it had before the split into apps
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["status", "created_at"], name="api_image_status_13103c_idx"),
            # Per-version and per-variant figures over a window (guardrails, stats).
            models.Index(fields=["detector_version", "finished_at"], name="image_version_finished_idx"),
            models.Index(fields=["rollout", "variant", "finished_at"], name="image_rollout_finished_idx"),
            # A batch's items not yet ended: whether its last one just ended is one probe of this
            # small index, however many items the batch has (jobs/services/batches.py).
            models.Index(
                fields=["batch"],
                condition=models.Q(status__in=["queued", "processing"]),
                name="image_batch_open_idx",
            ),
        ]
        constraints = [
            # Submission is idempotent per client and request_id.
            models.UniqueConstraint(fields=["client", "request_id"], name="image_unique_client_request_id"),
        ]

    def __str__(self) -> str:
        return f"{self.request_id} ({self.status})"

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def latest_delivery(self) -> "CallbackDelivery | None":
        """The newest callback delivery; reads prefetched deliveries when they are there."""
        return max(self.deliveries.all(), key=lambda d: (d.created_at, d.id), default=None)


class Face(models.Model):
    """One detection, in the pixel coordinates of the EXIF-oriented image: a face (label "face"),
    or another object for a model with other labels ("cat", "person"). It keeps the name Face and
    the table api_face from when every detection was a face."""

    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="faces")
    detector_version = models.ForeignKey("registry.DetectorVersion", on_delete=models.PROTECT, related_name="+")
    # Rank by confidence within the image, 0 first: keeps the order stable across reads.
    index = models.PositiveSmallIntegerField()
    box_x = models.PositiveIntegerField()
    box_y = models.PositiveIntegerField()
    box_width = models.PositiveIntegerField()
    box_height = models.PositiveIntegerField()
    confidence = models.FloatField()
    # {"left_eye": [x, y], "right_eye": ..., "nose": ..., "mouth_left": ..., "mouth_right": ...}
    # (the points the model has: none for most objects)
    landmarks = models.JSONField(default=dict)
    # What was detected: "face" for face models, the class name otherwise.
    label = models.CharField(max_length=64, default="face", db_index=True)

    class Meta:
        db_table = "api_face"
        ordering = ["image", "index"]
        constraints = [models.UniqueConstraint(fields=["image", "index"], name="face_unique_index_per_image")]

    def __str__(self) -> str:
        return f"{self.label} {self.index} of {self.image_id}"


class ShadowStatus(models.TextChoices):
    QUEUED = "queued"
    COMPLETED = "completed"
    FAILED = "failed"


class ShadowRun(models.Model):
    """The other version of a rollout run on a job's photo, to compare faces. Its result is
    stored here only: never returned to the client, never called back."""

    job = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="shadow_runs")
    rollout = models.ForeignKey("rollouts.Rollout", on_delete=models.PROTECT, related_name="shadow_runs")
    detector_version = models.ForeignKey("registry.DetectorVersion", on_delete=models.PROTECT, related_name="+")
    # The side this run plays: "candidate" (shadow mode, on baseline jobs) or "baseline" (a sample
    # of a canary's candidate jobs, to measure agreement).
    variant = models.CharField(max_length=16)
    status = models.CharField(max_length=16, choices=ShadowStatus.choices, default=ShadowStatus.QUEUED)
    # Every detection kept (the job's labels apply), in the shape of the job's "detections":
    # [{"label", "box": {...}, "confidence", "landmarks"}]; runs made before labels have no "label"
    # (faces).
    faces = models.JSONField(default=list)
    face_count = models.PositiveIntegerField(null=True, blank=True)  # those labelled "face"
    detection_ms = models.PositiveIntegerField(null=True, blank=True)
    detector_cold = models.BooleanField(default=False)
    error_code = models.CharField(max_length=64, blank=True)
    # How many times a worker started this run (a message that keeps killing workers is failed
    # with too_many_attempts), and when its message was last published and how many times (the
    # sweeper publishes runs whose publish was lost, a bounded number of times).
    attempts = models.PositiveIntegerField(default=0)
    enqueued_at = models.DateTimeField(null=True, blank=True)
    enqueue_count = models.PositiveIntegerField(default=0)
    # F1 of the candidate's faces against the baseline's on this photo (IoU >= 0.5), 0 to 1.
    agreement = models.FloatField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["rollout", "finished_at"], name="shadow_rollout_finished_idx")]
        constraints = [models.UniqueConstraint(fields=["job", "rollout"], name="shadow_one_per_job_and_rollout")]

    def __str__(self) -> str:
        return f"shadow {self.variant} {self.detector_version_id} of {self.job_id}"


class DeadLetter(models.Model):
    """A task message that gave up: its transient error (the database, storage) outlived every
    retry and not even the failure could be written. The worker leaves it on the broker's
    dead-letter queue (CELERY_QUEUE_DEAD); the sweeper records it here once the database is back.
    A record for operators: the job, shadow run or delivery it was about is pushed on by the
    sweeper from its own row, a bounded number of times."""

    task = models.CharField(max_length=200)
    task_id = models.CharField(max_length=64, blank=True)
    args = models.JSONField(default=list)
    kwargs = models.JSONField(default=dict)
    retries = models.PositiveIntegerField(default=0)
    # The exception's class and text: for operators only, never shown to a client.
    error = models.TextField(blank=True)
    # When the worker gave up; when the sweeper took the message off the queue.
    died_at = models.DateTimeField(null=True, blank=True)
    recorded_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-recorded_at"]

    def __str__(self) -> str:
        return f"{self.task}{tuple(self.args)}"
