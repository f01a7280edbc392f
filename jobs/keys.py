"""Where a job's objects live in the bucket. The keys are the server's choice: the kind, the day
the job was made (for lifecycle rules) and its id. Plain functions, imported by the services and
by erasure alike (a module of its own so that neither needs the other)."""

import uuid

from django.utils import timezone

from .models import Image


def object_key(kind: str, image_id: uuid.UUID, extension: str, when=None) -> str:
    return f"{kind}/{(when or timezone.now()):%Y/%m/%d}/{image_id}.{extension}"


def annotated_object_key(image: Image) -> str:
    """The key of a job's annotated image: fixed per job, whether it was made yet or not."""
    return object_key("annotated", image.id, "jpg", image.created_at)
