from django.contrib import admin, messages
from django.db.models import Exists, OuterRef

from core.admin import ReadOnlyAdmin

from .models import ActiveDetector, DetectorVersion
from .services import RegistryError, detector_version_activate, detector_version_retire


@admin.register(DetectorVersion)
class DetectorVersionAdmin(ReadOnlyAdmin):
    list_display = ("id", "label", "labels", "is_active", "retired_at", "created_at")
    readonly_fields = [f.name for f in DetectorVersion._meta.fields] + ["label"]
    actions = ["activate", "retire"]

    def get_queryset(self, request):
        # One query for the whole list rather than one per row.
        return super().get_queryset(request).annotate(active=Exists(ActiveDetector.objects.filter(version=OuterRef("pk"))))

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
