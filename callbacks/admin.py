from django.contrib import admin

from core.admin import ReadOnlyAdmin, ReadOnlyInline

from .models import CallbackAttempt, CallbackDelivery


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
