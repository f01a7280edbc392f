"""Operators' view of the jobs: read-only, with the detections (faces and other labels) and
callback deliveries inline and both photos shown."""

from django.contrib import admin, messages
from django.db.models import Count, OuterRef, Subquery
from django.db.models.functions import Coalesce
from django.http import Http404, HttpResponseGone, StreamingHttpResponse
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils.html import format_html

from callbacks.models import CallbackDelivery
from core.admin import ReadOnlyAdmin, ReadOnlyInline
from core.errors import DomainError
from storage import s3 as storage

from .erasure import image_job_erase
from .models import Batch, DeadLetter, Face, Image, JobStatus, ShadowRun
from .services import image_job_cancel, image_job_redeliver


class FaceInline(ReadOnlyInline):
    """The job's detections: faces, or other objects (label)."""

    model = Face
    verbose_name, verbose_name_plural = "detection", "detections"
    fields = ("index", "label", "box_x", "box_y", "box_width", "box_height", "confidence", "landmarks", "detector_version")


class ShadowRunInline(ReadOnlyInline):
    """The other version of a rollout run on this job's photo: never shown to the client."""

    model = ShadowRun
    fields = (
        "variant",
        "detector_version",
        "status",
        "face_count",
        "agreement",
        "detection_ms",
        "detector_cold",
        "error_code",
        "attempts",
        "enqueue_count",
        "created_at",
        "finished_at",
    )


class DeliveryInline(ReadOnlyInline):
    model = CallbackDelivery
    show_change_link = True
    fields = ("webhook_id", "status", "attempt_count", "last_status_code", "last_error", "next_attempt_at", "created_at", "finished_at")


@admin.register(Image)
class ImageAdmin(ReadOnlyAdmin):
    list_display = ("request_id", "client", "status", "face_count", "model_version", "variant", "callback", "created_at", "finished_at")
    list_filter = ("status", "model_version", "variant", "rollout", "deliveries__status", "client")
    search_fields = ("request_id", "=id", "cohort")
    date_hierarchy = "created_at"
    inlines = [FaceInline, ShadowRunInline, DeliveryInline]
    actions = ["redeliver_callback", "cancel", "erase"]
    readonly_fields = (
        "id",
        "original_thumbnail",
        "annotated_thumbnail",
        *[f.name for f in Image._meta.fields if f.name != "id"],
    )
    fieldsets = (
        (None, {"fields": ("id", "client", "request_id", "status", "error_code", "error_message", "attempts")}),
        ("Photos", {"fields": ("original_thumbnail", "annotated_thumbnail")}),
        (
            "Result",
            {"fields": ("detector_version", "model_version", "labels", "width", "height", "face_count", "detection_ms", "detector_cold")},
        ),
        # By URL (fetched by the worker), its expiry and its batch: empty for a plain upload.
        ("Submission", {"fields": ("image_url", "expires_at", "batch")}),
        ("Rollout", {"fields": ("rollout", "variant", "cohort")}),
        ("Times", {"fields": ("created_at", "started_at", "finished_at", "updated_at")}),
        ("Retention and erasure", {"fields": ("original_expired_at", "annotated_expired_at", "deleted_at")}),
        ("Callback", {"fields": ("callback_url",)}),
        ("Queueing", {"fields": ("enqueued_at", "enqueue_count")}),
        (
            "Storage",
            {"fields": ("original_filename", "original_key", "original_content_type", "original_size", "annotated_key")},
        ),
    )

    @admin.display(description="Callback")
    def callback(self, obj: Image) -> str:
        latest = obj.latest_delivery
        return latest.status if latest else ("pending" if obj.callback_url else "-")

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("client").prefetch_related("deliveries")

    def _each(self, request, queryset, service, done: str) -> None:
        """Run ``service`` on each selected job; refusals are shown per job, the count after."""
        count = 0
        for image in queryset:
            try:
                service(image_id=image.id)
                count += 1
            except DomainError as exc:
                self.message_user(request, f"{image.request_id}: {exc.message}", messages.WARNING)
        if count:
            self.message_user(request, done.format(count=count), messages.SUCCESS)

    @admin.action(description="Send the callback again")
    def redeliver_callback(self, request, queryset):
        self._each(request, queryset, image_job_redeliver, "{count} callback(s) queued for delivery.")

    @admin.action(description="Cancel (queued jobs only)")
    def cancel(self, request, queryset):
        # The same service as POST /api/v1/images/{id}/cancel/: a started or ended job is refused.
        self._each(request, queryset, image_job_cancel, "{count} job(s) canceled.")

    @admin.action(description="Erase photos and detections (keeps a tombstone)")
    def erase(self, request, queryset):
        # The same service as DELETE /api/v1/images/{id}/ (jobs/erasure.py).
        self._each(request, queryset, image_job_erase, "{count} job(s) erased.")

    def get_urls(self):
        # Photos are served through the admin (staff only): the storage server need not be
        # reachable from the operator's browser.
        own = [
            path(
                "<uuid:image_id>/photo/<str:which>/",
                self.admin_site.admin_view(self.photo_view),
                name="jobs_image_photo",
            )
        ]
        return own + super().get_urls()

    def photo_view(self, request, image_id, which):
        image = get_object_or_404(Image, pk=image_id)
        key = {"original": image.original_key, "annotated": image.annotated_key}.get(which)
        if image.status == JobStatus.DELETED:
            return HttpResponseGone("erased on request")
        if which in ("original", "annotated") and getattr(image, f"{which}_expired_at"):
            return HttpResponseGone("deleted at the end of its retention period")
        if not key:
            raise Http404("no such photo")
        try:
            chunks = storage.storage_stream(key=key)
        except storage.StorageError as exc:
            raise Http404(f"photo unavailable: {exc}") from exc
        content_type = image.original_content_type if which == "original" else "image/jpeg"
        return StreamingHttpResponse(chunks, content_type=content_type)

    def _thumbnail(self, obj: Image, which: str, present: bool) -> str:
        if obj.status == JobStatus.DELETED:
            return "erased"
        if getattr(obj, f"{which}_expired_at"):
            return "expired (retention)"
        if not present:
            return "-"
        url = reverse("admin:jobs_image_photo", args=[obj.pk, which])
        return format_html('<a href="{}"><img src="{}" style="max-width:320px;max-height:320px"></a>', url, url)

    @admin.display(description="Original")
    def original_thumbnail(self, obj: Image) -> str:
        return self._thumbnail(obj, "original", bool(obj.original_key))

    @admin.display(description="Annotated")
    def annotated_thumbnail(self, obj: Image) -> str:
        return self._thumbnail(obj, "annotated", bool(obj.annotated_key))


@admin.register(DeadLetter)
class DeadLetterAdmin(ReadOnlyAdmin):
    """Task messages that gave up with the database (or storage) away, recorded by the sweeper
    once it was back: what each was about and why. The sweeper has already handed the job, run
    or delivery back to its own bounded path (docs/reliability.md)."""

    list_display = ("task", "subject", "retries", "error_short", "died_at", "recorded_at")
    list_filter = ("task",)
    search_fields = ("task_id", "args")
    date_hierarchy = "recorded_at"
    readonly_fields = ("task", "task_id", "args", "kwargs", "retries", "error", "died_at", "recorded_at")

    @admin.display(description="About")
    def subject(self, obj: DeadLetter) -> str:
        return ", ".join(str(arg) for arg in obj.args) or "-"

    @admin.display(description="Error")
    def error_short(self, obj: DeadLetter) -> str:
        return obj.error[:120]


class BatchDeliveryInline(ReadOnlyInline):
    model = CallbackDelivery
    fk_name = "batch"
    show_change_link = True
    fields = ("webhook_id", "status", "attempt_count", "last_status_code", "last_error", "next_attempt_at", "created_at", "finished_at")


@admin.register(Batch)
class BatchAdmin(ReadOnlyAdmin):
    """Batches with their items' counts by status (the items are jobs: Jobs > Images, by batch)."""

    list_display = ("id", "client", "state", "item_count", "completed", "failed", "open", "created_at", "finished_at")
    list_filter = ("client",)
    search_fields = ("=id",)
    date_hierarchy = "created_at"
    inlines = [BatchDeliveryInline]

    def get_queryset(self, request):
        # The counts in one query with the page, not one per row and column.
        items = Image.objects.filter(batch=OuterRef("pk")).order_by().values("batch")
        return (
            super()
            .get_queryset(request)
            .annotate(
                n_completed=_count(items.filter(status=JobStatus.COMPLETED)),
                n_failed=_count(items.exclude(status__in=(JobStatus.COMPLETED, JobStatus.QUEUED, JobStatus.PROCESSING))),
                n_open=_count(items.filter(status__in=(JobStatus.QUEUED, JobStatus.PROCESSING))),
            )
        )

    @admin.display(description="status")
    def state(self, batch: Batch) -> str:
        return batch.status

    @admin.display(description="completed", ordering="n_completed")
    def completed(self, batch: Batch) -> int:
        return batch.n_completed

    @admin.display(description="failed, canceled, expired", ordering="n_failed")
    def failed(self, batch: Batch) -> int:
        return batch.n_failed

    @admin.display(description="queued or processing", ordering="n_open")
    def open(self, batch: Batch) -> int:
        return batch.n_open


def _count(items):
    return Coalesce(Subquery(items.annotate(n=Count("id")).values("n")), 0)
