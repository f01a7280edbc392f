"""The callback sender (callbacks.sender) in the processes of a worker on the delivery queue:
started in each pool process, or by the first delivery task a process runs, and stopped with it
(connected in workers/signals.py). A detection-only worker's processes run one that claims
nothing (DETECT_SENDS_CALLBACKS): it sends the first try of the jobs they finish."""

import logging

from django.conf import settings

from callbacks.sender import Sender, sender_running, sender_start, sender_stop
from jobs.logcontext import job_log_context_for

logger = logging.getLogger(__name__)

# Set in the parent worker process, inherited by its forked children.
_delivers = False


def note_queues(sender) -> None:
    """In the worker's parent: whether it consumes the delivery queue."""
    global _delivers
    queues = set(sender.app.amqp.queues.consume_from or sender.app.amqp.queues) if sender is not None else set()
    _delivers = settings.CELERY_QUEUE_DELIVER in queues


def child_start(*, detects: bool) -> None:
    """In a new pool process of a delivering worker: its sender, at once. In one that only
    detects: one that sends its own jobs' first tries, when DETECT_SENDS_CALLBACKS."""
    # At once, not at the first task: retries due after a restart go out without waiting for one.
    if _delivers:
        sender()
    elif detects and settings.DETECT_SENDS_CALLBACKS:
        sender_start(log_fields=_log_fields, claims=False)


def child_stop() -> None:
    if sender_running() is not None:
        sender_stop()


def sender() -> Sender:
    """This process's running sender."""
    return sender_start(log_fields=_log_fields)


def _log_fields(delivery_id: int) -> dict:
    return job_log_context_for(delivery_id=delivery_id)


def sender_with_free_thread() -> Sender | None:
    """This process's sender if it is running (a delivering worker's pool process) and a thread
    of it is free, that thread reserved (Sender.reserve: send_claimed or release it); else None."""
    running = sender_running()
    return running if running is not None and running.reserve() else None
