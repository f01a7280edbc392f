"""Celery tasks: thin wrappers that take ids, call one service, and retry transient errors.

The entry points of the workers. Services enqueue these by name (jobs.services.DETECT_TASK, ...),
so a task's name (module path and function) is part of the contract with messages in flight.
"""

import datetime as dt
import logging
import random
import uuid

from celery import shared_task
from celery.exceptions import Ignore, Reject, Retry, SoftTimeLimitExceeded
from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.utils import timezone
from kombu import Exchange, Queue

from callbacks import services as delivery
from core.logging import log_context_add, log_context_get
from jobs import retention, services, stats
from jobs.logcontext import job_log_context_for
from registry import services as registry
from rollouts import alerts, guardrails
from rollouts import services as rollouts
from storage.s3 import ObjectNotFound, StorageError
from workers import sending

logger = logging.getLogger(__name__)

# Storage or database trouble: worth waiting for.
TRANSIENT_ERRORS = (StorageError, OperationalError, InterfaceError)


def backoff(retries: int) -> float:
    """Exponential backoff with full jitter: spreads the retries of many jobs after an outage."""
    return random.uniform(0, min(settings.JOB_RETRY_BACKOFF_MAX, settings.JOB_RETRY_BACKOFF_BASE * 2**retries))


# The database alone: what a task that cannot write down its outcome waits for.
DATABASE_ERRORS = (OperationalError, InterfaceError)


# --- Giving the message back: retry, then the dead-letter queue ------------------------------------
#
# A task never acknowledges a message whose job it could not move. On a transient error it
# publishes its own retry (self.retry: the broker alone is needed, the database may be gone) with
# a backoff, and Celery acknowledges the original only once the retry is published. After
# JOB_MAX_RETRIES it records the failure; if not even that can be written (the database is still
# away) the message goes to the dead-letter queue (CELERY_QUEUE_DEAD) for the sweeper to record
# and hand back once the database returns. docs/reliability.md has the whole story.


def _dead_queue() -> Queue:
    name = settings.CELERY_QUEUE_DEAD
    return Queue(name, Exchange(name, type="direct", durable=True), routing_key=name, durable=True)


def _retry(task, exc: Exception, **kwargs) -> None:
    """Raise the task's retry after a backoff (kwargs: the retry's keyword arguments, if they
    change). If the retry cannot be published (the broker is gone too), the message is handed
    back to the broker as it is instead of being acknowledged."""
    options = {"kwargs": {**(task.request.kwargs or {}), **kwargs}} if kwargs else {}
    try:
        raise task.retry(exc=exc, countdown=backoff(task.request.retries), **options)
    except (Retry, Reject, SoftTimeLimitExceeded):
        raise
    except Exception as publish_error:
        logger.error("%s: could not publish its retry (%s); handing the message back", task.name, publish_error)
        raise Reject(publish_error, requeue=True) from publish_error


def _dead_letter(task, exc: Exception, **kwargs) -> None:
    """Put this message on the dead-letter queue: its transient error outlived every retry and
    the outcome could not be written. Ends the task with Ignore: the message is acknowledged and
    a chain stops here (the job's delivery step is published again with the job). Raises
    Reject(requeue=True) instead when even that publish fails, so that the broker keeps it.
    ``kwargs``: added to the message's own (what the sweeper needs to hand the job back)."""
    request = task.request
    body = {
        "task": task.name,
        "task_id": request.id or "",
        "args": list(request.args or ()),
        "kwargs": {**(request.kwargs or {}), **kwargs},
        "retries": request.retries,
        "error": f"{type(exc).__name__}: {exc}"[:2000],
        "died_at": timezone.now().isoformat(),
    }
    queue = _dead_queue()
    try:
        with task.app.producer_or_acquire() as producer:
            producer.publish(
                body,
                exchange=queue.exchange,
                routing_key=queue.routing_key,
                declare=[queue],
                serializer="json",
                delivery_mode="persistent",
                retry=True,
                retry_policy=settings.CELERY_TASK_PUBLISH_RETRY_POLICY,
            )
    except Exception as publish_error:
        logger.error(
            "%s%r: could not publish its dead letter (%s); handing the message back", task.name, tuple(body["args"]), publish_error
        )
        raise Reject(publish_error, requeue=True) from publish_error
    logger.error(
        "%s%r: gave up after %d retries (%s); sent to the dead-letter queue %s",
        task.name,
        tuple(body["args"]),
        request.retries,
        body["error"],
        queue.name,
    )
    raise Ignore()


def _give_up(task, exc: Exception, record, **kwargs) -> None:
    """Out of retries: ``record()`` writes the outcome (a failed job, run...). When the database
    is what is missing, the message goes to the dead-letter queue instead (with ``kwargs``)."""
    try:
        record()
    except DATABASE_ERRORS as record_error:
        _dead_letter(task, record_error if isinstance(exc, DATABASE_ERRORS) else exc, **kwargs)


def _job_fail(job_id: uuid.UUID, code: str, message: str):
    return lambda: services.image_job_fail(image_id=job_id, code=code, message=message)


@shared_task(bind=True, max_retries=None, ignore_result=True)
def detect_faces(self, image_id: str, attempt: int | None = None) -> str:
    """Detect the faces of one job. Returns normally once the job is terminal, so the chained
    delivery runs for failed jobs too. ``attempt``: set by this task's own retry (see
    jobs.services.image_job_start)."""
    job_id = uuid.UUID(image_id)
    # The job's fields on this task's log lines (its scope: workers/tasklogs.py) are added by the
    # job's start, from the row it reads (the header's request id, when there is one, wins over
    # the row's); a job the start did not read gets them below, for the delivery's lines.
    handoff = _CallbackHandoff()
    try:
        _detect_faces(self, job_id, attempt, handoff)
        if log_context_get("job_id") is None:
            # A best effort: the database may be gone.
            log_context_add(keep_existing=True, **job_log_context_for(image_id=job_id))
        if handoff.settled or _deliver_here(job_id, handoff):
            # Its first callback try is on its way from this process: the chained delivery task
            # (published by Celery after this returns, from the request's chain) has nothing to do.
            self.request.chain = None
    finally:
        handoff.close()
    return image_id


class _CallbackHandoff:
    """A free thread of this process's sender, held for the job's first callback try while the
    job is detected (DETECT_SENDS_CALLBACKS): the try is leased when its delivery is made, so the
    thread must be there before. None held: the chained delivery task does it, as before."""

    def __init__(self) -> None:
        self.sender = sending.sender_with_free_thread() if settings.DETECT_SENDS_CALLBACKS else None
        # settled: nothing is left for the chained delivery task (sent, or nothing to send).
        self.sent = self.settled = False

    def send(self, claim) -> None:
        """The job's callback settled: ``claim`` to send on the held thread, or None (none to send)."""
        self.settled = True
        if claim is not None:
            self.sender.send_claimed(claim)
            self.sent = True

    def close(self) -> None:
        if self.sender is not None and not self.sent:
            self.sender.release()
        self.sender = None


def _detect_faces(task, job_id: uuid.UUID, attempt: int | None, handoff: _CallbackHandoff) -> None:
    image_id = str(job_id)
    redelivered = bool((task.request.delivery_info or {}).get("redelivered"))
    started = None  # the job's row, when this attempt started it
    try:
        try:
            # With a thread held, the completion makes the callback delivery leased and hands
            # its try over.
            handing = {"callback_claimed": handoff.send} if handoff.sender is not None else {}
            started = services.image_job_detect(image_id=job_id, redelivered=redelivered, attempt=attempt, **handing)
        except ObjectNotFound:
            services.image_job_fail(image_id=job_id, code="original_missing", message="The uploaded image is gone from storage.")
        except SoftTimeLimitExceeded:
            services.image_job_fail(image_id=job_id, code="timeout", message="Detection took longer than the time limit.")
        except (services.JobInterrupted, *TRANSIENT_ERRORS):
            raise
        except Exception:
            # The traceback is for the operators; the client gets a fixed sentence (no exception text).
            logger.exception("job %s: detection crashed", image_id)
            services.image_job_fail(image_id=job_id, code="internal_error", message=services.JOB_ERROR_MESSAGES["internal_error"])
    except (services.JobInterrupted, *TRANSIENT_ERRORS) as caught:
        # The cause, and the attempt this task ran as when it had started the job.
        exc = caught.__cause__ if isinstance(caught, services.JobInterrupted) else caught
        attempt = caught.attempt if isinstance(caught, services.JobInterrupted) else attempt
        if task.request.retries >= settings.JOB_MAX_RETRIES:
            logger.error("job %s: transient error persisted through %d retries; failing it", image_id, task.request.retries, exc_info=exc)
            # Failed (its shadow runs and its callback follow, below and in the chain), or
            # dead-lettered (Ignore: the task ends here).
            _give_up(
                task,
                exc,
                _job_fail(job_id, "dependency_unavailable", services.JOB_ERROR_MESSAGES["dependency_unavailable"]),
                **({"attempt": attempt} if attempt is not None else {}),
            )
        else:
            logger.warning("job %s: transient error, retry %d: %s", image_id, task.request.retries + 1, exc)
            try:
                services.image_job_requeue(image_id=job_id)
            except DATABASE_ERRORS:
                # The job may still say processing: the retry carries the attempt to resume it.
                logger.warning("job %s: could not put it back to queued (database unavailable); the retry resumes it", image_id)
            # Only a retry that resumes a started attempt says so: the first message's arguments
            # stay what they were.
            _retry(task, exc, **({"attempt": attempt} if attempt is not None else {}))
    # Only now that the job is over do its shadow runs (rollouts) go out: the client's job first.
    # A job outside a rollout has none (they are made with the job, for a job routed by one):
    # no query for it. One this attempt did not start (a redelivery of a finished job, a failure)
    # is looked up, so a worker that died before publishing them loses nothing.
    if started is None or started.rollout_id is not None:
        services.image_job_shadows_enqueue(image_id=job_id)


def _deliver_here(job_id: uuid.UUID, handoff: _CallbackHandoff) -> bool:
    """The callback of a job that ended without a completion of this task (failed, canceled,
    expired, or finished by another copy) from this process, on the thread ``handoff`` holds:
    its delivery made with its first try's lease, that try handed to the thread, which POSTs and
    records it while this slot detects the next photo. True when nothing is left for the
    chained delivery task; False (it then runs as before) when no thread is held, the job needs
    its drawing, its delivery existed, its receiver is at its cap, or anything failed."""
    if handoff.sender is None:
        return False
    done, claim = False, None
    try:
        done, claim = services.image_job_callback_handoff(image_id=job_id)
    except Exception as exc:
        # The delivery task, with its retries, makes it instead (a row made here is reused).
        logger.warning("job %s: could not make its callback delivery here (%s); the delivery task will", job_id, exc)
    if done:
        handoff.send(claim)
    return done


@shared_task(bind=True, max_retries=None, ignore_result=True)
def deliver_result(self, image_id: str) -> str:
    """Annotate a finished job's photo, then make its callback delivery and try it. A database
    error anywhere is retried (the delivery row must be made); past the retries the message goes
    to the dead-letter queue, and the sweeper publishes it again."""
    job_id = uuid.UUID(image_id)
    log_context_add(keep_existing=True, **job_log_context_for(image_id=job_id))
    try:
        services.image_job_annotate(image_id=job_id)
    except TRANSIENT_ERRORS as exc:
        if self.request.retries < settings.JOB_MAX_RETRIES:
            _retry(self, exc)
        logger.error("job %s: annotation gave up after retries; calling back without it: %s", image_id, exc)
    except Exception:
        # The client still hears about its job; output_image_url stays null.
        logger.exception("job %s: annotation failed; calling back without it", image_id)

    # This process's sender, when it runs and has a free thread: the new row is then made with
    # its first try's lease, and that try handed to the thread at once (no claim round trips).
    sender = sending.sender_with_free_thread()
    claim = None
    try:
        outbox_row, claim = services.image_job_callback_delivery_claimed(image_id=job_id, claim=sender is not None)
    except DATABASE_ERRORS as exc:
        if self.request.retries < settings.JOB_MAX_RETRIES:
            logger.warning("job %s: database unavailable for its callback, retry %d: %s", image_id, self.request.retries + 1, exc)
            _retry(self, exc)
        _dead_letter(self, exc)
        return image_id
    finally:
        if sender is not None and claim is None:
            sender.release()
    if claim is not None:
        sender.send_claimed(claim)
    elif outbox_row is not None:
        # Once the row exists it is the outbox's: a failed try here is retried from the row.
        _attempt(outbox_row.id)
    return image_id


@shared_task(bind=True, max_retries=None, ignore_result=True)
def deliver_callback(self, delivery_id: int) -> None:
    """Try one callback delivery (a retry, or a redelivery asked for by an operator). A database
    error is retried; the row stays pending, so past the retries the sweeper sends it when due."""
    log_context_add(keep_existing=True, **job_log_context_for(delivery_id=delivery_id))
    try:
        _attempt(delivery_id)
    except DATABASE_ERRORS as exc:
        if self.request.retries < settings.JOB_MAX_RETRIES:
            logger.warning("delivery %s: database unavailable, retry %d: %s", delivery_id, self.request.retries + 1, exc)
            _retry(self, exc)
        _dead_letter(self, exc)


def _attempt(delivery_id: int) -> None:
    # Handed to this process's sender, which POSTs on a thread of its own: the task's slot is
    # free at once, however slow the receiver (callbacks/sender.py). The sender finds the
    # retries in the rows when they are due.
    sending.sender().wake(delivery_id)


@shared_task
def sweep() -> dict | None:
    """Periodic (Celery beat): record the dead letters, push on stuck jobs and shadow runs, and
    wake the callback sender. With the database away the tick is skipped (the next one,
    SWEEP_INTERVAL later, is its retry): nothing is lost by acknowledging it."""
    try:
        dead = dead_letters_drain()
    except DATABASE_ERRORS:
        dead = None  # the database is away: the rest below says so too
    except Exception:
        # The broker's trouble must not hold up the jobs' own sweep.
        logger.exception("sweeper: could not read the dead-letter queue")
        dead = None
    try:
        counts = services.image_jobs_sweep()
        counts.update(services.shadow_runs_sweep())
        counts["batches_ended"] = services.batches_finish_sweep()
        due = delivery.callback_deliveries_due()
    except DATABASE_ERRORS as exc:
        logger.warning("sweeper: database unavailable, skipping this run: %s", exc)
        return None
    # Due deliveries are the sender's to find (it reads the rows); this only makes sure the
    # process has one running, and counts those overdue (a sign that senders fall behind).
    sending.sender().wake()
    return {**counts, "deliveries": len(due), "dead_letters": dead}


@shared_task
def expire_jobs() -> int | None:
    """Periodic (Celery beat): queued jobs past their expires_at end "expired" and are called
    back. With the database away the tick is skipped (the next one is its retry; the detect
    task checks each job's expiry again when it starts)."""
    try:
        return services.image_jobs_expire_sweep()
    except DATABASE_ERRORS as exc:
        logger.warning("expiry sweep: database unavailable, skipping this run: %s", exc)
        return None


# At most this many dead letters are recorded per sweep: a long outage's pile is worked through
# over a few sweeps rather than in one long task.
DEAD_LETTERS_PER_SWEEP = 200


def dead_letters_drain(limit: int = DEAD_LETTERS_PER_SWEEP) -> int:
    """Take messages off the dead-letter queue, recording each (jobs.services.dead_letter_record)
    before acknowledging it; a message that cannot be recorded goes back. Returns how many were
    recorded."""
    recorded = 0
    app = sweep.app
    with app.connection_for_read() as conn:
        queue = conn.SimpleQueue(_dead_queue(), no_ack=False)
        try:
            while recorded < limit:
                try:
                    message = queue.get(block=False)
                except queue.Empty:
                    break
                try:
                    body = message.decode()
                    services.dead_letter_record(
                        task=str(body.get("task", "")),
                        args=body.get("args") or [],
                        kwargs=body.get("kwargs") or {},
                        task_id=str(body.get("task_id") or ""),
                        retries=int(body.get("retries") or 0),
                        error=str(body.get("error") or ""),
                        died_at=_parse_time(body.get("died_at")),
                    )
                except DATABASE_ERRORS:
                    message.requeue()
                    raise
                except Exception:
                    # Not a dead letter of ours (or garbled): logged, then dropped, never looped on.
                    logger.exception("dropping an unreadable message from the dead-letter queue")
                message.ack()
                recorded += 1
        finally:
            queue.close()
    return recorded


def _parse_time(value) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(value) if value else None
    except (TypeError, ValueError):
        return None


@shared_task(bind=True, max_retries=None, ignore_result=True)
def shadow_detect(self, shadow_run_id: int) -> None:
    """Run the other version of a rollout on a job's photo (a shadow run): stored, compared,
    never returned or called back. Transient errors retry; anything else fails the run only."""
    log_context_add(keep_existing=True, **job_log_context_for(shadow_run_id=shadow_run_id))
    redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
    try:
        try:
            services.shadow_run_detect(shadow_run_id=shadow_run_id, redelivered=redelivered)
        except TRANSIENT_ERRORS:
            raise
        except SoftTimeLimitExceeded:
            services.shadow_run_fail(shadow_run_id=shadow_run_id, code="timeout")
        except Exception:
            logger.exception("shadow run %s crashed", shadow_run_id)
            services.shadow_run_fail(shadow_run_id=shadow_run_id, code="internal_error")
    except TRANSIENT_ERRORS as exc:
        if self.request.retries < settings.JOB_MAX_RETRIES:
            logger.warning("shadow run %s: transient error, retry %d: %s", shadow_run_id, self.request.retries + 1, exc)
            _retry(self, exc)
        _give_up(self, exc, lambda: services.shadow_run_fail(shadow_run_id=shadow_run_id, code="dependency_unavailable"))


@shared_task
def evaluate_rollouts() -> dict | None:
    """Periodic (Celery beat): judge the live rollout's guardrails on its window, roll it back on
    a breach, advance its stages, switch a blue-green one once every worker is warm. With the
    database away the tick is skipped: a retry would judge a stale window, the next tick
    (ROLLOUT_EVALUATE_INTERVAL later) judges the current one."""
    try:
        return _evaluate_rollouts()
    except DATABASE_ERRORS as exc:
        logger.warning("rollout evaluation: database unavailable, skipping this run: %s", exc)
        return None


def _evaluate_rollouts() -> dict | None:
    rollout = rollouts.rollout_live()
    if rollout is None:
        return None
    # The window's figures, the current stage's candidate jobs and, after a blue-green switch,
    # the baseline's figures before it (rollouts never read the job rows).
    figures = stats.rollout_guardrail_figures(rollout=rollout)
    warm = registry.workers_warm(version_id=rollout.candidate_id)
    return guardrails.rollout_evaluate(rollout_id=rollout.id, figures=figures, warm=warm)


@shared_task
def retention_sweep() -> dict:
    """Periodic (Celery beat): delete photos and annotated images past their retention
    (RETENTION_DAYS_*), and finish erasures the store refused at the time."""
    return retention.retention_sweep()


@shared_task(bind=True, max_retries=None, ignore_result=True)
def send_rollout_alert(self, event_id: int) -> None:
    """Deliver a rollout event's alert to ROLLOUT_ALERT_URL through the outbox. Rollbacks now
    make the alert's delivery themselves; this task stays for messages published before. A
    database error (the event could not be read) is retried, then dead-lettered."""
    try:
        alert = alerts.rollout_alert_send(event_id=event_id)
    except DATABASE_ERRORS as exc:
        if self.request.retries < settings.JOB_MAX_RETRIES:
            _retry(self, exc)
        _dead_letter(self, exc)
        return
    if alert is not None:
        _attempt(alert.id)
