"""Reads of jobs, shared by the API and the admin."""

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from django.conf import settings
from django.db.models import QuerySet

from clients.models import ApiClient
from core.errors import Conflict, Gone, NotFound, Unavailable
from storage import s3 as storage

from .models import Image, JobStatus

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


@dataclass(frozen=True)
class AnnotatedImage:
    """Where a job's annotated JPEG is read: a presigned ``url`` when the storage server is
    public, else its bytes as ``chunks``."""

    image: Image
    url: str | None = None
    chunks: Iterator[bytes] | None = None


EXPIRED_MESSAGE = "The annotated image was deleted at the end of its retention period."


def image_annotated_get(*, client: ApiClient, image_id: str) -> AnnotatedImage:
    """The client's job's annotated JPEG. Raises NotFound ``not_found`` (no such job of this
    client), Gone ``deleted`` (erased on request) or ``expired`` (past its retention, or removed
    by a bucket lifecycle rule), NotFound ``not_available`` (the job failed, or the object is gone
    from storage), Conflict ``not_ready`` (not drawn yet), Unavailable ``storage_unavailable``
    (storage down)."""
    # Here, not at the top: retention reaches the services, which import this module.
    from . import retention

    image = image_get(client=client, image_id=image_id)
    if image.status == JobStatus.DELETED:
        raise Gone("deleted", "The job was erased; its images are gone.")
    if image.annotated_expired_at is not None:
        raise Gone("expired", EXPIRED_MESSAGE)
    if not image.annotated_key:
        if image.status == JobStatus.FAILED:
            raise NotFound("not_available", "The job failed; there is no annotated image.")
        raise Conflict("not_ready", "The annotated image is not ready yet.")
    if settings.S3_PUBLIC_ENDPOINT:
        return AnnotatedImage(image=image, url=storage.storage_presigned_url(key=image.annotated_key))
    try:
        chunks = storage.storage_stream(key=image.annotated_key)
    except storage.ObjectNotFound as exc:
        if retention.image_expired(image, "annotated"):  # a bucket lifecycle rule came first
            raise Gone("expired", EXPIRED_MESSAGE) from exc
        raise NotFound("not_available", "The annotated image is missing from storage.") from exc
    except storage.StorageError as exc:
        raise Unavailable("storage_unavailable", "Storage is unavailable; try again.") from exc
    return AnnotatedImage(image=image, chunks=chunks)
