"""The one JSON representation of a job: the body of GET /api/v1/images/{id}/ and of its callback.

The API and the callback outbox both build it here, so the two can never drift apart. Absolute
URLs come from PUBLIC_BASE_URL: the worker has no request to build them from.
"""

from typing import Any

from django.conf import settings

from callbacks.models import CallbackDelivery, DeliveryStatus
from detection.labels import FACE

from .models import Batch, Image, JobStatus


def _url(path: str) -> str:
    return f"{settings.PUBLIC_BASE_URL}{path}"


def image_representation(image: Image, *, delivery: CallbackDelivery | None = None) -> dict[str, Any]:
    """The job as clients see it, in GET responses and in the callback body alike. ``delivery``:
    the delivery that carries this representation (a callback body); see callback_representation."""
    # Every detection, most confident first (the rows' index); "faces" are those labelled "face",
    # in the shape they always had, so a client of a face model sees what it always saw.
    rows = list(image.faces.all())
    faces = [
        face_representation(x=f.box_x, y=f.box_y, width=f.box_width, height=f.box_height, confidence=f.confidence, landmarks=f.landmarks)
        for f in rows
        if f.label == FACE
    ]
    detections = [
        detection_representation(
            label=f.label, x=f.box_x, y=f.box_y, width=f.box_width, height=f.box_height, confidence=f.confidence, landmarks=f.landmarks
        )
        for f in rows
    ]
    return {
        **image_submitted_representation(image),
        # Null: uploaded; a job on its own; never expires.
        "image_url": image.image_url or None,
        "expires_at": iso(image.expires_at),
        "batch_id": str(image.batch_id) if image.batch_id else None,
        "started_at": iso(image.started_at),
        "finished_at": iso(image.finished_at),
        "model_version": image.model_version or None,
        # The rollout that routed the job and the side it got (null: none, or model_version asked for).
        "rollout": {"id": str(image.rollout_id), "variant": image.variant} if image.rollout_id else None,
        "width": image.width,
        "height": image.height,
        "face_count": image.face_count,
        "faces": faces,
        # Null until the job is completed, as face_count.
        "detection_count": len(detections) if image.face_count is not None else None,
        "detections": detections,
        # The labels the upload asked to keep (null: every label).
        "labels": list(image.labels) or None,
        "error": {"code": image.error_code, "message": image.error_message} if image.error_code else None,
        # Null until it is made, and again once retention or erasure removed it.
        "output_image_url": _url(f"/api/v1/images/{image.id}/annotated/")
        if image.annotated_key and not image.annotated_expired_at and image.status != JobStatus.DELETED
        else None,
        "callback": callback_representation(image, delivery=delivery),
    }


def face_representation(*, x: int, y: int, width: int, height: int, confidence: float, landmarks: dict) -> dict[str, Any]:
    """One face as clients see it in "faces" (no label: they are all faces)."""
    return {"box": {"x": x, "y": y, "width": width, "height": height}, "confidence": confidence, "landmarks": landmarks}


def detection_representation(*, label: str, x: int, y: int, width: int, height: int, confidence: float, landmarks: dict) -> dict[str, Any]:
    """One detection as clients see it in "detections": a face's shape plus its label. Shadow
    runs store their detections in this same shape, so they compare with the job's
    (detection.compare.boxes_of and labels_of read it)."""
    return {"label": label, **face_representation(x=x, y=y, width=width, height=height, confidence=confidence, landmarks=landmarks)}


def image_submitted_representation(image: Image) -> dict[str, Any]:
    """The 202 answer to a submission (and the first fields of image_representation)."""
    return {
        "id": str(image.id),
        "request_id": image.request_id,
        "status": image.status,
        "status_url": _url(f"/api/v1/images/{image.id}/"),
        "created_at": iso(image.created_at),
    }


def callback_representation(image: Image, *, delivery: CallbackDelivery | None = None) -> dict[str, Any]:
    """The state of a callback delivery and its attempts.

    Without ``delivery`` (GET): the job's latest delivery, live. With it (a callback body): that
    delivery, the one carrying the body, as it is when made and before it is saved: pending, its
    own webhook id (the webhook-id header), no attempts, nothing scheduled yet.
    """
    latest = delivery if delivery is not None else (image.latest_delivery if image.callback_url else None)
    if latest is not None:
        status = latest.status
    else:
        status = "pending" if image.callback_url else "none"  # pending: the job is not finished yet
    return {
        "url": image.callback_url or None,
        "status": status,
        "webhook_id": latest.webhook_id if latest else None,
        "attempts": [
            {
                "number": a.number,
                "at": iso(a.started_at),
                "duration_ms": a.duration_ms,
                "status_code": a.status_code,
                "error": a.error or None,
            }
            # An unsaved delivery (a callback body being made) has no attempts to read yet.
            for a in (sorted(latest.attempts.all(), key=lambda a: a.number) if latest and latest.pk else [])
        ],
        "delivered_at": iso(latest.finished_at) if status == DeliveryStatus.DELIVERED else None,
        "next_attempt_at": iso(latest.next_attempt_at) if latest and status == DeliveryStatus.PENDING else None,
    }


def iso(value) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def batch_urls(batch: Batch) -> dict[str, str]:
    return {
        "status_url": _url(f"/api/v1/batches/{batch.id}/"),
        "results_url": _url(f"/api/v1/batches/{batch.id}/results/"),
    }


def batch_submitted_representation(batch: Batch) -> dict[str, Any]:
    """The 202 answer to a batch."""
    return {"id": str(batch.id), **batch_urls(batch), "item_count": batch.item_count, "status": batch.status}


def batch_representation(batch: Batch, *, counts: dict[str, int]) -> dict[str, Any]:
    """A batch as GET returns it, without its page of items: ``counts`` by item status."""
    return {
        "id": str(batch.id),
        "status": batch.status,
        "item_count": batch.item_count,
        "counts": counts,
        "created_at": iso(batch.created_at),
        "expires_at": iso(batch.expires_at),
        "canceled_at": iso(batch.canceled_at),
        "finished_at": iso(batch.finished_at),
        "callback_url": batch.callback_url or None,
        **batch_urls(batch),
    }


def batch_callback_representation(batch: Batch, *, counts: dict[str, int]) -> dict[str, Any]:
    """The body of a batch's one callback, sent when its last item ended."""
    return {
        "type": "batch.completed",
        "batch_id": str(batch.id),
        "status": batch.status,
        "item_count": batch.item_count,
        "counts": counts,
        "results_url": batch_urls(batch)["results_url"],
        "finished_at": iso(batch.finished_at),
    }
