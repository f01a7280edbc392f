"""Celery tasks: thin wrappers that take ids, call one service, and retry transient errors."""

import logging
import random
import uuid

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.db import InterfaceError, OperationalError

from api import services
from api.storage import ObjectNotFound, StorageError

logger = logging.getLogger(__name__)

# Storage or database trouble: worth waiting for.
TRANSIENT_ERRORS = (StorageError, OperationalError, InterfaceError)
MAX_TRANSIENT_RETRIES = 6


def backoff(retries: int, *, base: float = 2.0, cap: float = 60.0) -> float:
    """Exponential backoff with full jitter: spreads retries of many jobs after an outage."""
    return random.uniform(0, min(cap, base * 2**retries))


@shared_task(bind=True, max_retries=MAX_TRANSIENT_RETRIES)
def detect_faces(self, image_id: str) -> str:
    """Detect the faces of one job. Always returns normally once the job is terminal, so the
    chained delivery runs for failed jobs too."""
    job_id = uuid.UUID(image_id)
    try:
        services.image_job_detect(image_id=job_id)
    except ObjectNotFound:
        services.image_job_fail(image_id=job_id, code="original_missing", message="The uploaded image is gone from storage.")
    except TRANSIENT_ERRORS as exc:
        if self.request.retries >= self.max_retries:
            services.image_job_fail(image_id=job_id, code="dependency_unavailable", message=f"Gave up after retries: {exc}")
        else:
            logger.warning("job %s: transient error, retrying: %s", image_id, exc)
            services.image_job_requeue(image_id=job_id)
            raise self.retry(exc=exc, countdown=backoff(self.request.retries))
    except SoftTimeLimitExceeded:
        services.image_job_fail(image_id=job_id, code="timeout", message="Detection took longer than the time limit.")
    except Exception as exc:
        logger.exception("job %s: detection crashed", image_id)
        services.image_job_fail(image_id=job_id, code="internal_error", message=f"{type(exc).__name__}: {exc}")
    return image_id


@shared_task(bind=True, max_retries=None)
def deliver_result(self, image_id: str) -> str:
    """Annotate a finished job's photo, then POST its result to the callback_url, retrying the
    callback on the CALLBACK_RETRY_DELAYS schedule."""
    job_id = uuid.UUID(image_id)
    try:
        services.image_job_annotate(image_id=job_id)
    except TRANSIENT_ERRORS as exc:
        if self.request.retries < MAX_TRANSIENT_RETRIES:
            raise self.retry(exc=exc, countdown=backoff(self.request.retries))
        logger.error("job %s: annotation gave up after retries; calling back without it: %s", image_id, exc)
    except Exception:
        # The client still hears about its job; output_image_url stays null.
        logger.exception("job %s: annotation failed; calling back without it", image_id)

    next_delay = services.image_job_deliver_callback(image_id=job_id)
    if next_delay is not None:
        raise self.retry(countdown=next_delay)
    return image_id
