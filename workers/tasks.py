"""Celery tasks: thin wrappers that take ids, call one service, and retry transient errors.

The entry points of the workers. Services enqueue these by name (jobs.services.DETECT_TASK, ...),
so a task's name (module path and function) is part of the contract with messages in flight.
"""

import logging
import random
import uuid

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import InterfaceError, OperationalError

from callbacks import services as delivery
from core.logging import log_context_add
from jobs import services, stats
from jobs.logcontext import job_log_context_for
from registry import services as registry
from rollouts import alerts, guardrails
from rollouts import services as rollouts
from workers import sending
from storage.s3 import ObjectNotFound, StorageError

logger = logging.getLogger(__name__)

# Storage or database trouble: worth waiting for.
TRANSIENT_ERRORS = (StorageError, OperationalError, InterfaceError)


def backoff(retries: int) -> float:
    """Exponential backoff with full jitter: spreads the retries of many jobs after an outage."""
    return random.uniform(0, min(settings.JOB_RETRY_BACKOFF_MAX, settings.JOB_RETRY_BACKOFF_BASE * 2**retries))


@shared_task(bind=True, max_retries=None)
def detect_faces(self, image_id: str) -> str:
    """Detect the faces of one job. Returns normally once the job is terminal, so the chained
    delivery runs for failed jobs too."""
    job_id = uuid.UUID(image_id)
    # The job's fields on this task's log lines (its scope: workers/signals.py); the header's
    # request id, when there is one, wins over the row's.
    log_context_add(keep_existing=True, **job_log_context_for(image_id=job_id))
    redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
    try:
        services.image_job_detect(image_id=job_id, redelivered=redelivered)
    except ObjectNotFound:
        services.image_job_fail(image_id=job_id, code="original_missing", message="The uploaded image is gone from storage.")
    except TRANSIENT_ERRORS as exc:
        if self.request.retries >= settings.JOB_MAX_RETRIES:
            logger.exception("job %s: transient error persisted through %d retries; failing it", image_id, self.request.retries)
            services.image_job_fail(
                image_id=job_id, code="dependency_unavailable", message=services.JOB_ERROR_MESSAGES["dependency_unavailable"]
            )
        else:
            logger.warning("job %s: transient error, retry %d: %s", image_id, self.request.retries + 1, exc)
            services.image_job_requeue(image_id=job_id)
            raise self.retry(exc=exc, countdown=backoff(self.request.retries))
    except SoftTimeLimitExceeded:
        services.image_job_fail(image_id=job_id, code="timeout", message="Detection took longer than the time limit.")
    except Exception:
        # The traceback is for the operators; the client gets a fixed sentence (no exception text).
        logger.exception("job %s: detection crashed", image_id)
        services.image_job_fail(image_id=job_id, code="internal_error", message=services.JOB_ERROR_MESSAGES["internal_error"])
    # Only now that the job is over do its shadow runs (rollouts) go out: the client's job first.
    services.image_job_shadows_enqueue(image_id=job_id)
    return image_id


@shared_task(bind=True, max_retries=None)
def deliver_result(self, image_id: str) -> str:
    """Annotate a finished job's photo, then make its callback delivery and try it."""
    job_id = uuid.UUID(image_id)
    log_context_add(keep_existing=True, **job_log_context_for(image_id=job_id))
    try:
        services.image_job_annotate(image_id=job_id)
    except TRANSIENT_ERRORS as exc:
        if self.request.retries < settings.JOB_MAX_RETRIES:
            raise self.retry(exc=exc, countdown=backoff(self.request.retries))
        logger.error("job %s: annotation gave up after retries; calling back without it: %s", image_id, exc)
    except Exception:
        # The client still hears about its job; output_image_url stays null.
        logger.exception("job %s: annotation failed; calling back without it", image_id)

    outbox_row = services.image_job_callback_delivery(image_id=job_id)
    if outbox_row is not None:
        _attempt(outbox_row.id)
    return image_id


@shared_task
def deliver_callback(delivery_id: int) -> None:
    """Try one callback delivery (a retry, or a redelivery asked for by an operator)."""
    log_context_add(keep_existing=True, **job_log_context_for(delivery_id=delivery_id))
    _attempt(delivery_id)


def _attempt(delivery_id: int) -> None:
    # Handed to this process's sender, which POSTs on a thread of its own: the task's slot is
    # free at once, however slow the receiver (callbacks/sender.py). The sender finds the
    # retries in the rows when they are due.
    sending.sender().wake(delivery_id)


@shared_task
def sweep() -> dict:
    """Periodic (Celery beat): push on stuck jobs; wake the callback sender."""
    counts = services.image_jobs_sweep()
    # Due deliveries are the sender's to find (it reads the rows); this only makes sure the
    # process has one running, and counts those overdue (a sign that senders fall behind).
    sending.sender().wake()
    due = delivery.callback_deliveries_due()
    return {**counts, "deliveries": len(due)}


@shared_task(bind=True, max_retries=None)
def shadow_detect(self, shadow_run_id: int) -> None:
    """Run the other version of a rollout on a job's photo (a shadow run): stored, compared,
    never returned or called back. Transient errors retry; anything else fails the run only."""
    log_context_add(keep_existing=True, **job_log_context_for(shadow_run_id=shadow_run_id))
    try:
        services.shadow_run_detect(shadow_run_id=shadow_run_id)
    except TRANSIENT_ERRORS as exc:
        if self.request.retries < settings.JOB_MAX_RETRIES:
            raise self.retry(exc=exc, countdown=backoff(self.request.retries))
        services.shadow_run_fail(shadow_run_id=shadow_run_id, code="dependency_unavailable")
    except SoftTimeLimitExceeded:
        services.shadow_run_fail(shadow_run_id=shadow_run_id, code="timeout")
    except Exception:
        logger.exception("shadow run %s crashed", shadow_run_id)
        services.shadow_run_fail(shadow_run_id=shadow_run_id, code="internal_error")


@shared_task
def evaluate_rollouts() -> dict | None:
    """Periodic (Celery beat): judge the live rollout's guardrails on its window, roll it back on
    a breach, advance its stages, switch a blue-green one once every worker is warm."""
    rollout = rollouts.rollout_live()
    if rollout is None:
        return None
    # The window's figures, the current stage's candidate jobs and, after a blue-green switch,
    # the baseline's figures before it (rollouts never read the job rows).
    figures = stats.rollout_guardrail_figures(rollout=rollout)
    warm = registry.workers_warm(version_id=rollout.candidate_id)
    return guardrails.rollout_evaluate(rollout_id=rollout.id, figures=figures, warm=warm)


@shared_task
def send_rollout_alert(event_id: int) -> None:
    """Deliver a rollout event's alert to ROLLOUT_ALERT_URL through the outbox. Rollbacks now
    make the alert's delivery themselves; this task stays for messages published before."""
    alert = alerts.rollout_alert_send(event_id=event_id)
    if alert is not None:
        _attempt(alert.id)
