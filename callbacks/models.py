"""The delivery outbox: a delivery row per message, an attempt row per HTTP try. It belongs to no
one domain: a job's callback and an operator's rollout alert are both deliveries (the link to a
job is there only for callbacks)."""

from django.db import models


class DeliveryStatus(models.TextChoices):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class DeliveryKind(models.TextChoices):
    # A job's result to the callback_url its client gave: only public addresses are called.
    CALLBACK = "callback"
    # An operator's alert to a URL from the settings (ROLLOUT_ALERT_URL), often an internal
    # address: the address policy that guards clients' URLs does not apply.
    ALERT = "alert"
    # A batch's one callback (type batch.completed) to the callback_url its client gave, once its
    # last item ended: held to the same address policy as a job's.
    BATCH = "batch"


class CallbackDelivery(models.Model):
    """One message to a URL (an outbox row): the exact body, signed on each try under the same
    webhook id, retried on a schedule until delivered or failed. A callback points at its job,
    a batch's callback at its batch, an alert at neither (``subject`` says what it is about)."""

    image = models.ForeignKey("jobs.Image", on_delete=models.CASCADE, related_name="deliveries", null=True, blank=True)
    # A batch's callback points at its batch instead (kind batch).
    batch = models.ForeignKey("jobs.Batch", on_delete=models.CASCADE, related_name="deliveries", null=True, blank=True)
    kind = models.CharField(max_length=16, choices=DeliveryKind.choices, default=DeliveryKind.CALLBACK)
    # What a delivery without a job is about, in words ("rollout 3f2c... rollback, event 42").
    subject = models.CharField(max_length=200, blank=True, default="")
    webhook_id = models.CharField(max_length=64, unique=True)
    url = models.URLField(max_length=2048)
    # The receiver (host:port of the URL): per-host caps and the circuit breaker go by it.
    host = models.CharField(max_length=300, blank=True, default="", db_index=True)
    # The exact JSON bytes sent (a snapshot of the job when the delivery was made).
    body = models.TextField()
    status = models.CharField(max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING, db_index=True)
    attempt_count = models.PositiveIntegerField(default=0)
    # When the next try is due. While a try is in flight it is pushed ahead as a lease, so a
    # second copy of the task (or the sweeper) does not send it twice.
    next_attempt_at = models.DateTimeField(null=True, blank=True, db_index=True)
    # Set while a try is in flight (the end of its lease), cleared when the try is recorded:
    # what a host's "in flight" counts. A sender that dies leaves it to run out.
    sending_until = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "api_callbackdelivery"  # the table it had before the split into apps
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "callback deliveries"
        indexes = [models.Index(fields=["host", "status", "next_attempt_at"], name="delivery_host_due")]

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
        db_table = "api_callbackattempt"
        ordering = ["delivery", "number"]
        constraints = [models.UniqueConstraint(fields=["delivery", "number"], name="attempt_unique_number")]

    def __str__(self) -> str:
        return f"attempt {self.number} of {self.delivery_id}"


class CallbackHost(models.Model):
    """A receiver (host:port) and its circuit breaker: after CALLBACK_BREAKER_FAILURES failed tries
    in a row (timeouts, network errors, 408, 429, 5xx) it is open (nothing is sent to it) until
    ``open_until``; then one try goes through (half open), which closes it or opens it again."""

    host = models.CharField(max_length=300, unique=True)
    consecutive_failures = models.PositiveIntegerField(default=0)
    open_until = models.DateTimeField(null=True, blank=True)
    opened_count = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    # When this host last got a free slot: hosts wait their turn, the least recently served first.
    last_claimed_at = models.DateTimeField(null=True, blank=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["host"]

    def __str__(self) -> str:
        return self.host

    def breaker_state(self, now, threshold: int) -> str:
        """closed, open (nothing sent until open_until) or half_open (one try at a time)."""
        if self.open_until is not None and self.open_until > now:
            return "open"
        if self.consecutive_failures >= threshold:
            return "half_open"
        return "closed"
