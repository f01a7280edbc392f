"""Reads of jobs, shared by the API and the admin."""

import uuid

from django.db.models import QuerySet

from .errors import ApiError
from .models import ActiveDetector, ApiClient, DetectorVersion, Image

# What image_representation reads, fetched in a fixed number of queries.
JOB_PREFETCH = ("faces", "deliveries__attempts")


def image_get(*, client: ApiClient, image_id: str) -> Image:
    """The client's job with that id; ApiError 404 if there is none, it is no uuid, or the job
    is another client's (which must not be told apart from a missing one)."""
    try:
        pk = uuid.UUID(str(image_id))
    except ValueError:
        pk = None
    image = Image.objects.prefetch_related(*JOB_PREFETCH).filter(pk=pk, client=client).first() if pk else None
    if image is None:
        raise ApiError("not_found", "No image job with that id.", status_code=404)
    return image


def image_list(*, client: ApiClient, request_id: str | None = None) -> QuerySet[Image]:
    queryset = Image.objects.filter(client=client).prefetch_related(*JOB_PREFETCH).order_by("-created_at", "-id")
    if request_id is not None:
        queryset = queryset.filter(request_id=request_id)
    return queryset


def detector_version_list() -> QuerySet[DetectorVersion]:
    return DetectorVersion.objects.order_by("name", "created_at", "id")


def detector_version_get(*, version_id: str) -> DetectorVersion:
    version = DetectorVersion.objects.filter(id=version_id).first()
    if version is None:
        raise ApiError("not_found", "No detector version with that id.", status_code=404)
    return version


def detector_version_active_id() -> str | None:
    return ActiveDetector.objects.filter(id=1).values_list("version_id", flat=True).first()
