"""The first step of a job submitted by URL (``image_url``): the worker fetches the photo
(jobs/fetch.py), stores it under the key an upload would have had and records what an upload
records (size, type, sha256, width, height). From then on the job is like an uploaded one:
annotation, shadow runs and re-runs read the stored photo and never fetch again."""

import logging

from django.utils import timezone

from storage import s3 as storage

from ..fetch import FetchFailed, image_fetch
from ..keys import object_key
from ..models import Image, JobStatus
from .submission import _delete_quietly

logger = logging.getLogger(__name__)

__all__ = ["FetchFailed", "image_job_fetch"]


def image_job_fetch(*, image: Image) -> bool:
    """Fetch and store the photo of a processing job submitted by URL, unless it is stored
    already (then nothing happens). Returns False when the job stopped being processing
    meanwhile (erased): the stored copy is removed again. Raises FetchFailed (the job's error
    code and message) when the photo cannot be had; storage errors propagate (transient)."""
    if not image.image_url or image.original_sha256:
        return True
    fetched = image_fetch(image.image_url)
    info = fetched.info
    key = object_key("originals", image.id, info.extension, image.created_at)
    storage.storage_put(key=key, data=fetched.data, length=len(fetched.data), content_type=info.content_type)
    recorded = Image.objects.filter(id=image.id, status=JobStatus.PROCESSING).update(
        original_key=key,
        original_content_type=info.content_type,
        original_size=len(fetched.data),
        original_sha256=info.sha256,
        width=info.width,
        height=info.height,
        updated_at=timezone.now(),
    )
    if not recorded:
        _delete_quietly(key)
        return False
    image.original_key, image.original_content_type = key, info.content_type
    image.original_size, image.original_sha256 = len(fetched.data), info.sha256
    image.width, image.height = info.width, info.height
    logger.info("job %s: fetched %d bytes (%s) from its image_url", image.id, len(fetched.data), info.content_type)
    return True
