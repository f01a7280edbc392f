"""One job, one row: an uploaded image, its detection state, its faces and its callback state."""

import uuid

from django.db import models


class JobStatus(models.TextChoices):
    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"


TERMINAL_STATUSES = (JobStatus.COMPLETED, JobStatus.FAILED)


class CallbackStatus(models.TextChoices):
    # No callback_url was given: the client polls.
    NONE = "none"
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class Image(models.Model):
    """A detection job. Its status moves queued -> processing -> completed | failed, only
    through the functions in api/services.py, which check the current state first."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    request_id = models.CharField(max_length=128, db_index=True)
    callback_url = models.URLField(max_length=2048, blank=True)

    # Object keys are chosen by the server; the client's filename is kept for operators only.
    original_filename = models.CharField(max_length=255, blank=True)
    original_key = models.CharField(max_length=512)
    original_content_type = models.CharField(max_length=64)
    original_size = models.PositiveBigIntegerField()
    annotated_key = models.CharField(max_length=512, blank=True)

    status = models.CharField(max_length=16, choices=JobStatus.choices, default=JobStatus.QUEUED, db_index=True)
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.TextField(blank=True)
    # How many times a worker started detection on this job (more than one: it was redelivered).
    attempts = models.PositiveIntegerField(default=0)

    model_version = models.CharField(max_length=128, blank=True, db_index=True)
    width = models.PositiveIntegerField(null=True, blank=True)
    height = models.PositiveIntegerField(null=True, blank=True)
    face_count = models.PositiveIntegerField(null=True, blank=True)

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    callback_status = models.CharField(max_length=16, choices=CallbackStatus.choices, default=CallbackStatus.NONE)
    callback_attempts = models.PositiveIntegerField(default=0)
    callback_last_status_code = models.PositiveIntegerField(null=True, blank=True)
    callback_last_error = models.TextField(blank=True)
    callback_delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "created_at"])]

    def __str__(self) -> str:
        return f"{self.request_id} ({self.status})"

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


class Face(models.Model):
    """One detected face, in the pixel coordinates of the EXIF-oriented image."""

    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="faces")
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
