from django.conf import settings
from django.contrib import admin
from django.db.models import Count, IntegerField, OuterRef, Subquery, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from core.admin import ReadOnlyAdmin, ReadOnlyInline

from .models import CallbackAttempt, CallbackDelivery, CallbackHost, DeliveryStatus


class AttemptInline(ReadOnlyInline):
    model = CallbackAttempt
    fields = ("number", "started_at", "duration_ms", "status_code", "error", "response_excerpt")


@admin.register(CallbackDelivery)
class CallbackDeliveryAdmin(ReadOnlyAdmin):
    list_display = (
        "webhook_id",
        "kind",
        "image",
        "subject",
        "host",
        "status",
        "attempt_count",
        "last_status_code",
        "next_attempt_at",
        "created_at",
    )
    list_filter = ("status", "kind")
    search_fields = ("webhook_id", "image__request_id", "url", "subject")
    inlines = [AttemptInline]
    readonly_fields = [f.name for f in CallbackDelivery._meta.fields]


@admin.register(CallbackHost)
class CallbackHostAdmin(ReadOnlyAdmin):
    """Receivers: their breaker, and their deliveries in flight and waiting (due, not sent)."""

    list_display = ("host", "breaker", "in_flight", "waiting", "consecutive_failures", "open_until", "opened_count", "last_error")
    search_fields = ("host",)
    readonly_fields = [f.name for f in CallbackHost._meta.fields]

    def get_queryset(self, request):
        now = timezone.now()
        pending = CallbackDelivery.objects.filter(host=OuterRef("host"), status=DeliveryStatus.PENDING).order_by()

        def count(rows):
            return Coalesce(Subquery(rows.values("host").annotate(n=Count("id")).values("n")[:1], output_field=IntegerField()), Value(0))

        return (
            super()
            .get_queryset(request)
            .annotate(
                in_flight_count=count(pending.filter(sending_until__gt=now)),
                waiting_count=count(pending.filter(next_attempt_at__lte=now)),
            )
        )

    @admin.display(description="breaker")
    def breaker(self, obj: CallbackHost) -> str:
        return obj.breaker_state(timezone.now(), settings.CALLBACK_BREAKER_FAILURES).replace("_", " ")

    @admin.display(description="in flight")
    def in_flight(self, obj: CallbackHost) -> int:
        return obj.in_flight_count

    @admin.display(description="waiting")
    def waiting(self, obj: CallbackHost) -> int:
        return obj.waiting_count
