"""One job, one row: an uploaded image, its detection state, its faces and its callback state."""

import hashlib
import uuid

from django.db import models


class JobStatus(models.TextChoices):
    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"


TERMINAL_STATUSES = (JobStatus.COMPLETED, JobStatus.FAILED)


class DeliveryStatus(models.TextChoices):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class ApiClient(models.Model):
    """A customer of the API. Its jobs are its own: no other client can see them."""

    name = models.CharField(max_length=100, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    is_active = models.BooleanField(default=True)

    # DRF's permission checks read request.user.is_authenticated; an authenticated request's
    # user is the client.
    is_authenticated = True

    def __str__(self) -> str:
        return self.name


class ApiKey(models.Model):
    """A key of a client. Only a SHA-256 of the key is stored (keys are 190+ random bits, so a
    fast hash is enough); the prefix finds the row and is safe to show."""

    client = models.ForeignKey(ApiClient, on_delete=models.CASCADE, related_name="keys")
    prefix = models.CharField(max_length=16, unique=True)
    key_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.client})"


class DetectorVersion(models.Model):
    """A registered detector version: an implementation, its weights (by checksum) and its fixed
    settings. Versions are immutable once registered; they are activated or retired, never edited."""

    id = models.CharField(primary_key=True, max_length=64)  # name@version
    name = models.CharField(max_length=32)
    version = models.CharField(max_length=32)
    implementation = models.CharField(max_length=32)
    weights = models.JSONField(default=list)  # [{"file": "pnet.pt", "sha256": "..."}]
    packages = models.JSONField(default=dict)  # {"facenet-pytorch": "2.5.3", "torch": "2.14.1"}
    settings = models.JSONField(default=dict)
    settings_hash = models.CharField(max_length=64)
    code_commit = models.CharField(max_length=64, blank=True)
    notes = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    retired_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name", "created_at"]

    def __str__(self) -> str:
        return self.label

    @property
    def weights_digest(self) -> str:
        lines = sorted(f"{w['file']}:{w['sha256']}" for w in self.weights)
        return hashlib.sha256("\n".join(lines).encode()).hexdigest()

    @property
    def label(self) -> str:
        """The data-aware label recorded on jobs and faces, e.g. mtcnn@1.0.0+weights.3f9a2c1b."""
        return f"{self.id}+weights.{self.weights_digest[:8]}"


class ActiveDetector(models.Model):
    """The pointer to the version new jobs use: one row. Changing it takes effect for the next
    job submitted; running workers load the new version on first use."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    version = models.ForeignKey(DetectorVersion, on_delete=models.PROTECT)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"active: {self.version_id}"


class Image(models.Model):
    """A detection job. Its status moves queued -> processing -> completed | failed, only
    through the functions in api/services.py, which check the current state first."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    client = models.ForeignKey(ApiClient, on_delete=models.PROTECT, related_name="images")
    request_id = models.CharField(max_length=128, db_index=True)
    callback_url = models.URLField(max_length=2048, blank=True)

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
    detector_version = models.ForeignKey(DetectorVersion, on_delete=models.PROTECT, related_name="images")
    model_version = models.CharField(max_length=128, blank=True, db_index=True)
    width = models.PositiveIntegerField(null=True, blank=True)
    height = models.PositiveIntegerField(null=True, blank=True)
    face_count = models.PositiveIntegerField(null=True, blank=True)

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "created_at"])]
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
    """One detected face, in the pixel coordinates of the EXIF-oriented image."""

    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="faces")
    detector_version = models.ForeignKey(DetectorVersion, on_delete=models.PROTECT, related_name="+")
    # Rank by confidence within the image, 0 first: keeps the order stable across reads.
    index = models.PositiveSmallIntegerField()
    box_x = models.PositiveIntegerField()
    box_y = models.PositiveIntegerField()
    box_width = models.PositiveIntegerField()
    box_height = models.PositiveIntegerField()
    confidence = models.FloatField()
    # {"left_eye": [x, y], "right_eye": ..., "nose": ..., "mouth_left": ..., "mouth_right": ...}
    landmarks = models.JSONField(default=dict)

    class Meta:
        ordering = ["image", "index"]
        constraints = [models.UniqueConstraint(fields=["image", "index"], name="face_unique_index_per_image")]

    def __str__(self) -> str:
        return f"face {self.index} of {self.image_id}"


class CallbackDelivery(models.Model):
    """One message to a job's callback_url (an outbox row): the exact body, signed on each try
    under the same webhook id, retried on a schedule until delivered or failed."""

    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="deliveries")
    webhook_id = models.CharField(max_length=64, unique=True)
    url = models.URLField(max_length=2048)
    # The exact JSON bytes sent (a snapshot of the job when the delivery was made).
    body = models.TextField()
    status = models.CharField(max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING, db_index=True)
    attempt_count = models.PositiveIntegerField(default=0)
    # When the next try is due. While a try is in flight it is pushed ahead as a lease, so a
    # second copy of the task (or the sweeper) does not send it twice.
    next_attempt_at = models.DateTimeField(null=True, blank=True, db_index=True)
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "callback deliveries"

    def __str__(self) -> str:
        return f"{self.webhook_id} ({self.status})"


class CallbackAttempt(models.Model):
    """One HTTP try of a delivery."""

    delivery = models.ForeignKey(CallbackDelivery, on_delete=models.CASCADE, related_name="attempts")
    number = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    duration_ms = models.PositiveIntegerField()
    status_code = models.PositiveIntegerField(null=True, blank=True)
    # The first bytes of the receiver's answer, or the network error.
    response_excerpt = models.TextField(blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["delivery", "number"]
        constraints = [models.UniqueConstraint(fields=["delivery", "number"], name="attempt_unique_number")]

    def __str__(self) -> str:
        return f"attempt {self.number} of {self.delivery_id}"
