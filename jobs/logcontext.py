"""The fields a log line carries while a job is in hand (core.logging's context): which job,
the client's request_id for it, the version detecting it, how it was routed, and the id of the
HTTP request that made it."""

import logging
import uuid
from typing import Any

from django.db import DatabaseError

from .models import Image, ShadowRun

logger = logging.getLogger(__name__)

# The columns job_log_context reads: a task loads these alone.
_COLUMNS = ("id", "request_id", "model_version", "cohort", "rollout", "variant", "http_request_id")


def job_log_context(image: Image) -> dict[str, Any]:
    """The job's log fields: job_id, request_id (the client's), model_version, cohort, and
    rollout, variant and http_request_id when it has them."""
    fields: dict[str, Any] = {
        "job_id": str(image.id),
        "request_id": image.request_id,
        "model_version": image.model_version,
        "cohort": image.cohort,
    }
    if image.rollout_id is not None:
        fields["rollout"] = image.rollout_id
    if image.variant:
        fields["variant"] = image.variant
    if image.http_request_id:
        fields["http_request_id"] = image.http_request_id
    return fields


def job_log_context_for(
    *, image_id: uuid.UUID | None = None, delivery_id: int | None = None, shadow_run_id: int | None = None
) -> dict[str, Any]:
    """The log fields of the job a task works on, found by its id, a callback delivery's id or a
    shadow run's id (give one), with that id (and a shadow run's own version and side). A
    database that does not answer leaves the job's fields out rather than raise: the task meets
    the trouble itself, where it is retried."""
    if image_id is not None:
        lookup, own = {"id": image_id}, {}
    elif delivery_id is not None:
        lookup, own = {"deliveries__id": delivery_id}, {"delivery_id": delivery_id}
    elif shadow_run_id is not None:
        lookup, own = {"shadow_runs__id": shadow_run_id}, {"shadow_run_id": shadow_run_id}
    else:
        raise TypeError("job_log_context_for needs image_id, delivery_id or shadow_run_id")
    try:
        image = Image.objects.filter(**lookup).only(*_COLUMNS).first()
        if shadow_run_id is not None:
            # The job's own version and side are model_version and variant; the run's differ.
            run = ShadowRun.objects.filter(id=shadow_run_id).values("variant", "detector_version_id").first()
            if run is not None:
                own.update(shadow_variant=run["variant"], shadow_version=run["detector_version_id"])
    except DatabaseError as exc:
        logger.warning("could not read the job for the log context: %s", exc)
        return own
    return {**own, **(job_log_context(image) if image is not None else {})}
