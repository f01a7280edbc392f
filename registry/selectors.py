"""Reads of detector versions, shared by the API and the admin."""

from django.db.models import QuerySet

from core.errors import NotFound

from .models import ActiveDetector, DetectorVersion


def detector_version_list() -> QuerySet[DetectorVersion]:
    return DetectorVersion.objects.order_by("name", "created_at", "id")


def detector_version_get(*, version_id: str) -> DetectorVersion:
    version = DetectorVersion.objects.filter(id=version_id).first()
    if version is None:
        raise NotFound("not_found", "No detector version with that id.")
    return version


def detector_version_active_id() -> str | None:
    return ActiveDetector.objects.filter(id=1).values_list("version_id", flat=True).first()
