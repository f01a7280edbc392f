"""Reads of jobs, shared by the API and the admin."""

import uuid

from django.db.models import QuerySet

from clients.models import ApiClient
from core.errors import NotFound

from .models import Image

# What image_representation reads, fetched in a fixed number of queries.
JOB_PREFETCH = ("faces", "deliveries__attempts")


def image_get(*, client: ApiClient, image_id: str) -> Image:
    """The client's job with that id; NotFound if there is none, it is no uuid, or the job is
    another client's (which must not be told apart from a missing one)."""
    try:
        pk = uuid.UUID(str(image_id))
    except ValueError:
        pk = None
    image = Image.objects.prefetch_related(*JOB_PREFETCH).filter(pk=pk, client=client).first() if pk else None
    if image is None:
        raise NotFound("not_found", "No image job with that id.")
    return image


def image_list(*, client: ApiClient, request_id: str | None = None) -> QuerySet[Image]:
    queryset = Image.objects.filter(client=client).prefetch_related(*JOB_PREFETCH).order_by("-created_at", "-id")
    if request_id is not None:
        queryset = queryset.filter(request_id=request_id)
    return queryset
