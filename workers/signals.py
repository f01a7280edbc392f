"""The worker's process and task signals, connected to what they do (one module each):
fork-time loading (workers/process.py), pre-warm and heartbeats (workers/prewarm.py), the
callback sender (workers/sending.py), the metrics server (workers/metrics_server.py) and the
logs' formats and request ids (workers/tasklogs.py). Nothing is done here but connecting them,
in an order that matters: a pool process lowers its priority (DETECTOR_NICE) before it starts any
thread, so that every thread of a detecting process inherits it."""

from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    before_task_publish,
    task_postrun,
    task_prerun,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
)
from django.db import close_old_connections

from . import metrics_server, prewarm, process, sending, tasklogs


@worker_init.connect
def _before_fork(sender=None, **_: object) -> None:
    process.parent_prepare(sender)
    sending.note_queues(sender)
    metrics_server.metrics_server_start()


@worker_process_init.connect
def _child_start(**_: object) -> None:
    metrics_server.metrics_reap_dead()
    detects = process.child_load_detector()
    sending.child_start(detects=detects)
    if detects:
        prewarm.prewarm_start()


@worker_process_shutdown.connect
def _child_exit(**_: object) -> None:
    if process.detects():
        prewarm.prewarm_stop()
    sending.child_stop()
    metrics_server.metrics_process_exit()


@after_setup_logger.connect
def _celery_logger(logger=None, **_: object) -> None:
    tasklogs.celery_handlers_formatted(logger)


@after_setup_task_logger.connect
def _celery_task_logger(logger=None, **_: object) -> None:
    tasklogs.task_handler_formatted(logger)


@before_task_publish.connect
def _publish(headers=None, **_: object) -> None:
    tasklogs.request_id_header(headers)


@task_prerun.connect
def _task_start(task=None, task_id=None, **_: object) -> None:
    _connections_checked(task)
    tasklogs.task_log_scope_open(task, task_id)


@task_postrun.connect
def _task_end(task=None, **_: object) -> None:
    tasklogs.task_log_scope_close(task)
    _connections_checked(task)


def _connections_checked(task) -> None:
    # Connections live across tasks (CELERY_DB_REUSE_MAX): like a request, a task drops one that
    # broke or outlived DATABASE_CONN_MAX_AGE, and its first query checks the one it keeps. Not
    # for a task run eagerly, inside its caller's transaction (Celery's fixup skips those too).
    if not getattr(getattr(task, "request", None), "is_eager", False):
        close_old_connections()
