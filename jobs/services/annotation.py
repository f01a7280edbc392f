"""The annotated image, drawn in the detect task on the photo it has just decoded: fetching and
decoding the photo a second time in the deliverer cost more CPU than the drawing itself
(docs/benchmarks.md, "pipeline"). The deliverer keeps its own path (delivery.image_job_annotate)
for jobs that reach it without one: a failed put here, or a job detected before this."""

import logging
import uuid
from collections.abc import Sequence

from PIL import Image as PILImage

from detection.annotate import annotate_jpeg
from storage import s3 as storage

from ..keys import annotated_object_key
from ..models import Image, JobStatus

logger = logging.getLogger(__name__)


def annotation_jpeg(*, rgb: PILImage.Image, faces: Sequence) -> bytes:
    """The annotated JPEG of ``rgb`` (the decoded, upright photo) with ``faces`` (FaceData, in
    the order they are stored) drawn on it, from the rows they become: byte for byte the image
    drawn from the stored rows (the same integers, the same floats)."""
    return annotate_jpeg(rgb, [face.row() for face in faces])


def annotation_store(*, image: Image, rgb: PILImage.Image, faces: Sequence) -> str:
    """Draw the job's annotated image and put it in the bucket under its fixed key. Returns the
    key, or "" when it could not be drawn or stored (logged): the job completes regardless and
    the deliverer draws it (its fallback), as it did for every job before."""
    key = annotated_object_key(image)
    try:
        jpeg = annotation_jpeg(rgb=rgb, faces=faces)
        storage.storage_put(key=key, data=jpeg, length=len(jpeg), content_type="image/jpeg")
    except storage.StorageError as exc:
        logger.warning("job %s: could not store the annotated image (%s); the deliverer draws it", image.id, exc)
        return ""
    except Exception:
        logger.exception("job %s: could not draw the annotated image; the deliverer tries again", image.id)
        return ""
    return key


def annotation_discard(*, image_id: uuid.UUID, key: str) -> None:
    """Delete an annotated image that its job did not record (it was erased, cancelled or
    finished by another attempt meanwhile), unless the job does name that key: then it is the
    job's (another attempt of the same job drew it under the same key). An erased job's never
    is: erasure names the key while it purges it, and a put that lands after its delete would
    otherwise outlive it (retention only sees recorded keys)."""
    if not Image.objects.filter(id=image_id, annotated_key=key).exclude(status=JobStatus.DELETED).exists():
        try:
            storage.storage_delete(key=key)
        except storage.StorageError:
            logger.exception("could not delete orphan object %s", key)
