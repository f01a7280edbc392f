"""Logs in the workers (core/logging.py): Celery's own handlers in LOG_FORMAT, the request id
carried from the API through every task as a message header, and a fresh log scope per task."""

import logging

from django.conf import settings

from core.logging import adopt_handlers, log_context_close, log_context_get, log_context_open

logger = logging.getLogger(__name__)

# The message header that carries the id of the HTTP request behind a task (api.middleware).
HTTP_REQUEST_ID_HEADER = "http_request_id"


def celery_handlers_formatted(logger_=None) -> None:
    """Celery keeps the root handler of settings.LOGGING (CELERY_WORKER_HIJACK_ROOT_LOGGER is
    False) but gives the multiprocessing logger one of its own: same format for it."""
    from celery.utils.log import get_multiprocessing_logger

    for target in (logger_, get_multiprocessing_logger()):
        if target is not None:
            adopt_handlers(target, settings.LOG_FORMAT)


def task_handler_formatted(logger_=None) -> None:
    """Celery's task logger (celery.task, get_task_logger) has a handler and a format of its own
    (worker_task_log_format): same format for it, with the task in the context instead."""
    if logger_ is not None:
        adopt_handlers(logger_, settings.LOG_FORMAT)


def request_id_header(headers) -> None:
    """Every task published while a request or a task is in hand carries its request id: the
    detect -> deliver chain and the callbacks from the API, the chain's next step, shadow runs,
    callback retries from the workers. A header set by the publisher itself is kept (a retry
    copies its task's headers)."""
    request_id = log_context_get("http_request_id")
    if request_id and headers is not None:
        headers.setdefault(HTTP_REQUEST_ID_HEADER, request_id)


def task_log_scope_open(task, task_id) -> None:
    """A fresh log scope per task: the task and its id, and the request id of its header. The
    task adds its job's fields (jobs.logcontext) once it knows the job; task_log_scope_close
    closes the scope, so nothing of one task is left on the lines of the next."""
    if task is None:
        return
    request = task.request
    header = getattr(request, HTTP_REQUEST_ID_HEADER, None) or (request.headers or {}).get(HTTP_REQUEST_ID_HEADER)
    request._log_scope = log_context_open(task=task.name, task_id=task_id, http_request_id=str(header)[:128] if header else None)


def task_log_scope_close(task) -> None:
    token = getattr(task.request, "_log_scope", None) if task is not None else None
    if token is None:
        return
    task.request._log_scope = None
    try:
        log_context_close(token)
    except ValueError:
        # Opened in another context (a pool that runs prerun and postrun apart): nothing of
        # this scope is in the current one to clear.
        logger.debug("task %s: its log scope was opened in another context", task.name)
