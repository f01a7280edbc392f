"""Operators' view of the rollouts: read-only pages with the event log inline, and the
transitions as actions (the same services as the API and the shell; the actor is
``admin:<username>``). Events are append-only: nothing here adds, edits or deletes one."""

import json

from django.contrib import admin, messages
from django.utils.html import format_html

from core.admin import ReadOnlyAdmin, ReadOnlyInline
from core.errors import DomainError
from registry.services import workers_warm

from . import services
from .models import Rollout, RolloutEvent

EVENT_FIELDS = ("at", "actor", "action", "from_status", "to_status", "from_weight", "to_weight", "reason", "figures")


class RolloutEventInline(ReadOnlyInline):
    model = RolloutEvent
    fields = EVENT_FIELDS
    ordering = ("at", "id")

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


def _actor(request) -> str:
    return f"admin:{request.user.get_username()}"


@admin.register(Rollout)
class RolloutAdmin(ReadOnlyAdmin):
    list_display = ("id", "mode", "baseline", "candidate", "status", "weight", "stage", "created_by", "created_at", "ended_at")
    list_filter = ("status", "mode")
    search_fields = ("=id", "baseline__id", "candidate__id", "created_by")
    date_hierarchy = "created_at"
    inlines = [RolloutEventInline]
    actions = ["promote", "rollback", "pause", "resume", "advance", "end"]
    readonly_fields = (
        "stage",
        "workers",
        "stages_json",
        "guardrails_json",
        *[f.name for f in Rollout._meta.fields if f.name not in ("stages", "guardrails")],
    )
    fieldsets = (
        (None, {"fields": ("id", "mode", "status", "baseline", "candidate", "created_by")}),
        ("Where it stands", {"fields": ("weight", "stage", "stage_index", "stage_started_at", "breaches", "switched_at", "workers")}),
        ("Plan", {"fields": ("stages_json", "guardrails_json", "shadow_sample", "quality_drop_max")}),
        ("Times", {"fields": ("created_at", "updated_at", "ended_at")}),
    )

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("baseline", "candidate")

    # Rollouts and their events are the record of what was decided: never deleted.
    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="Stage")
    def stage(self, obj: Rollout) -> str:
        stage = obj.current_stage
        return stage.label if stage is not None else "-"

    @admin.display(description="Workers warm")
    def workers(self, obj: Rollout) -> str:
        warm = workers_warm(version_id=obj.candidate_id)
        return f"{warm['loaded']} of {warm['live']} live detection workers have {obj.candidate_id} loaded"

    @admin.display(description="Stages")
    def stages_json(self, obj: Rollout):
        return format_html("<pre>{}</pre>", json.dumps(obj.stages, indent=1))

    @admin.display(description="Guardrails")
    def guardrails_json(self, obj: Rollout):
        return format_html("<pre>{}</pre>", json.dumps(obj.guardrails, indent=1, sort_keys=True))

    def _transition(self, request, queryset, service, done: str) -> None:
        for rollout in queryset:
            try:
                service(rollout_id=rollout.id, actor=_actor(request), reason=f"by hand in the admin ({request.user.get_username()})")
            except DomainError as exc:
                self.message_user(request, f"{rollout.id}: {exc.message}", messages.ERROR)
            else:
                self.message_user(request, f"{rollout.id}: {done}.", messages.SUCCESS)

    @admin.action(description="Promote the candidate (make it active, end the rollout)")
    def promote(self, request, queryset):
        self._transition(request, queryset, services.rollout_promote, "promoted")

    @admin.action(description="Roll back (new jobs go to the baseline)")
    def rollback(self, request, queryset):
        self._transition(request, queryset, services.rollout_rollback, "rolled back")

    @admin.action(description="Pause")
    def pause(self, request, queryset):
        self._transition(request, queryset, services.rollout_pause, "paused")

    @admin.action(description="Resume")
    def resume(self, request, queryset):
        self._transition(request, queryset, services.rollout_resume, "resumed")

    @admin.action(description="Advance a canary to its next stage")
    def advance(self, request, queryset):
        self._transition(request, queryset, services.rollout_advance, "advanced")

    @admin.action(description="End (baseline stays active)")
    def end(self, request, queryset):
        self._transition(request, queryset, services.rollout_end, "ended")


@admin.register(RolloutEvent)
class RolloutEventAdmin(ReadOnlyAdmin):
    """Every rollout's events in one log, to search by actor or action."""

    list_display = ("at", "rollout", "actor", "action", "from_status", "to_status", "from_weight", "to_weight", "reason")
    list_filter = ("action",)
    search_fields = ("actor", "reason", "=rollout__id")
    date_hierarchy = "at"
    readonly_fields = ("rollout", *EVENT_FIELDS)
    actions = None

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("rollout")

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
