"""Operators' view of the jobs: read-only, with the faces inline and both photos shown."""

from django.contrib import admin, messages
from django.db.models import Exists, OuterRef
from django.http import Http404, StreamingHttpResponse
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils.html import format_html

from . import storage
from .delivery import callback_redeliver
from .errors import ApiError
from .auth import api_keys_revoke_all
from .models import ActiveDetector, ApiClient, ApiKey, CallbackAttempt, CallbackDelivery, DetectorVersion, Face, Image
from .registry import RegistryError, detector_version_activate, detector_version_retire


class ReadOnlyInline(admin.TabularInline):
    """Rows that the API, the workers or a management command make; the admin only shows them."""

    extra = 0
    can_delete = False

    def get_readonly_fields(self, request, obj=None):
        return self.fields

    def has_add_permission(self, request, obj=None) -> bool:
        return False


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows made elsewhere (see ReadOnlyInline): viewed and acted on, never added or edited."""

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


class FaceInline(ReadOnlyInline):
    model = Face
    fields = ("index", "box_x", "box_y", "box_width", "box_height", "confidence", "landmarks", "detector_version")


class DeliveryInline(ReadOnlyInline):
    model = CallbackDelivery
    show_change_link = True
    fields = ("webhook_id", "status", "attempt_count", "last_status_code", "last_error", "next_attempt_at", "created_at", "finished_at")


@admin.register(Image)
class ImageAdmin(ReadOnlyAdmin):
    list_display = ("request_id", "client", "status", "face_count", "model_version", "callback", "created_at", "finished_at")
    list_filter = ("status", "model_version", "deliveries__status", "client")
    search_fields = ("request_id", "=id")
    date_hierarchy = "created_at"
    inlines = [FaceInline, DeliveryInline]
    actions = ["redeliver_callback"]
    readonly_fields = (
        "id",
        "original_thumbnail",
        "annotated_thumbnail",
        *[f.name for f in Image._meta.fields if f.name != "id"],
    )
    fieldsets = (
        (None, {"fields": ("id", "client", "request_id", "status", "error_code", "error_message", "attempts")}),
        ("Photos", {"fields": ("original_thumbnail", "annotated_thumbnail")}),
        ("Result", {"fields": ("detector_version", "model_version", "width", "height", "face_count")}),
        ("Times", {"fields": ("created_at", "started_at", "finished_at", "updated_at")}),
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

    @admin.action(description="Send the callback again")
    def redeliver_callback(self, request, queryset):
        sent = 0
        for image in queryset:
            try:
                callback_redeliver(image_id=image.id)
                sent += 1
            except ApiError as exc:
                self.message_user(request, f"{image.request_id}: {exc.message}", messages.WARNING)
        if sent:
            self.message_user(request, f"{sent} callback(s) queued for delivery.", messages.SUCCESS)

    def get_urls(self):
        # Photos are served through the admin (staff only): the storage server need not be
        # reachable from the operator's browser.
        own = [
            path(
                "<uuid:image_id>/photo/<str:which>/",
                self.admin_site.admin_view(self.photo_view),
                name="api_image_photo",
            )
        ]
        return own + super().get_urls()

    def photo_view(self, request, image_id, which):
        image = get_object_or_404(Image, pk=image_id)
        key = {"original": image.original_key, "annotated": image.annotated_key}.get(which)
        if not key:
            raise Http404("no such photo")
        try:
            chunks = storage.storage_stream(key=key)
        except storage.StorageError as exc:
            raise Http404(f"photo unavailable: {exc}") from exc
        content_type = image.original_content_type if which == "original" else "image/jpeg"
        return StreamingHttpResponse(chunks, content_type=content_type)

    def _thumbnail(self, obj: Image, which: str, present: bool) -> str:
        if not present:
            return "-"
        url = reverse("admin:api_image_photo", args=[obj.pk, which])
        return format_html('<a href="{}"><img src="{}" style="max-width:320px;max-height:320px"></a>', url, url)

    @admin.display(description="Original")
    def original_thumbnail(self, obj: Image) -> str:
        return self._thumbnail(obj, "original", bool(obj.original_key))

    @admin.display(description="Annotated")
    def annotated_thumbnail(self, obj: Image) -> str:
        return self._thumbnail(obj, "annotated", bool(obj.annotated_key))


class AttemptInline(ReadOnlyInline):
    model = CallbackAttempt
    fields = ("number", "started_at", "duration_ms", "status_code", "error", "response_excerpt")


@admin.register(CallbackDelivery)
class CallbackDeliveryAdmin(ReadOnlyAdmin):
    list_display = ("webhook_id", "image", "status", "attempt_count", "last_status_code", "next_attempt_at", "created_at")
    list_filter = ("status",)
    search_fields = ("webhook_id", "image__request_id", "url")
    inlines = [AttemptInline]
    readonly_fields = [f.name for f in CallbackDelivery._meta.fields]


class ApiKeyInline(ReadOnlyInline):
    # Keys are made with `manage.py create_api_key`, which shows the key once.
    model = ApiKey
    fields = ("prefix", "created_at", "last_used_at", "revoked_at")


@admin.register(ApiClient)
class ApiClientAdmin(admin.ModelAdmin):
    list_display = ("name", "is_active", "created_at")
    search_fields = ("name", "keys__prefix")
    inlines = [ApiKeyInline]
    actions = ["revoke_all_keys"]

    @admin.action(description="Revoke all keys of the selected clients")
    def revoke_all_keys(self, request, queryset):
        count = api_keys_revoke_all(clients=queryset)
        self.message_user(request, f"{count} key(s) revoked.", messages.SUCCESS)


@admin.register(DetectorVersion)
class DetectorVersionAdmin(ReadOnlyAdmin):
    list_display = ("id", "label", "is_active", "retired_at", "created_at")
    readonly_fields = [f.name for f in DetectorVersion._meta.fields] + ["label"]
    actions = ["activate", "retire"]

    def get_queryset(self, request):
        # One query for the whole list rather than one per row.
        return super().get_queryset(request).annotate(
            active=Exists(ActiveDetector.objects.filter(version=OuterRef("pk")))
        )

    @admin.display(boolean=True, description="Active", ordering="active")
    def is_active(self, obj: DetectorVersion) -> bool:
        return obj.active

    @admin.action(description="Make active (new jobs use it)")
    def activate(self, request, queryset):
        if queryset.count() != 1:
            self.message_user(request, "Select exactly one version.", messages.WARNING)
            return
        try:
            version = detector_version_activate(version_id=queryset.get().id)
            self.message_user(request, f"{version.label} is active.", messages.SUCCESS)
        except RegistryError as exc:
            self.message_user(request, str(exc), messages.ERROR)

    @admin.action(description="Retire")
    def retire(self, request, queryset):
        for version in queryset:
            try:
                detector_version_retire(version_id=version.id)
            except RegistryError as exc:
                self.message_user(request, str(exc), messages.ERROR)

    # Versions come from files in detector_versions/ (manage.py detector_register) and are never
    # deleted: jobs and faces refer to them.
    def has_delete_permission(self, request, obj=None) -> bool:
        return False
