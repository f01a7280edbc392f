"""Worker process lifecycle: import the active engine's runtime once in the parent, load the
detector once per child with its share of the cores,
and keep the live rollout's versions loaded (pre-warm), reporting them in a heartbeat. Also the
logs: Celery's own handlers in LOG_FORMAT, and each task's log context (its request id)."""

import logging
import os
import socket
import threading

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
from django.conf import settings
from django.db import close_old_connections

from core import metrics
from core.logging import adopt_handlers, log_context_close, log_context_get, log_context_open
from core.system import usable_cores

logger = logging.getLogger(__name__)

# Set in the parent worker process, inherited by its forked children: whether this worker takes
# detection jobs. A worker on the delivery queue alone never loads torch.
_detects = False
# The worker's pool size (--concurrency), for the default thread count of each process.
_pool_size = 1


@worker_init.connect
def _import_before_fork(sender=None, **_: object) -> None:
    global _detects, _pool_size
    queues = set(sender.app.amqp.queues.consume_from or sender.app.amqp.queues) if sender is not None else set()
    _detects = settings.CELERY_QUEUE_DETECT in queues
    if not _detects:
        return
    try:
        _pool_size = max(1, int(getattr(sender, "concurrency", 1) or 1))
    except (TypeError, ValueError):  # "auto": Celery sizes the pool after this signal, from the cores
        _pool_size = os.cpu_count() or 1
    # Importing an engine's runtime takes seconds (torch: about 3); doing it once in the parent
    # lets every forked child start with it in memory. Only the active version's engine: a
    # worker serving mtcnn@1.2.0 (OpenVINO) never pays for torch. No model is loaded, no thread
    # started here.
    from detection import engines
    from registry.services import detector_version_active

    try:
        version = detector_version_active()
    except Exception:
        logger.exception("could not read the active detector version before forking")
        version = None
    finally:
        from django.db import connections

        connections.close_all()  # children must not inherit the parent's connection
    if version is not None:
        engines.preload(version.implementation)


def detector_threads(pool_size: int) -> int:
    """DETECTOR_THREADS, or when 0, this machine's cores shared among the pool's processes."""
    if settings.DETECTOR_THREADS:
        return settings.DETECTOR_THREADS
    return max(1, usable_cores() // max(1, pool_size))


def lower_priority(increment: int) -> None:
    """Add ``increment`` to this process's niceness (its threads, started later, inherit it), so
    that the API, callbacks and the database on the same machine go first. Anything the system
    refuses or cannot do is logged, never fatal: detection at normal priority still works."""
    if increment <= 0 or not hasattr(os, "nice"):
        return
    try:
        now = os.nice(min(increment, 19))
    except OSError as exc:
        logger.warning("could not lower the priority of detection process %d: %s", os.getpid(), exc)
        return
    logger.info("detection process %d runs at niceness %d (DETECTOR_NICE)", os.getpid(), now)


@worker_process_init.connect
def _load_detector(**_: object) -> None:
    """Load the configured detector in each worker process, before its first task."""
    if not _detects:
        logger.info("worker process %d ready, without a detector (delivery only)", os.getpid())
        return
    from detection import get_detector
    from registry.services import detector_spec, detector_version_active

    from detection import engines

    engines.threads = detector_threads(_pool_size)
    lower_priority(settings.DETECTOR_NICE)
    try:
        # The active version now; jobs pinned to others load theirs on first use.
        version = detector_version_active()
        detector = get_detector(detector_spec(version), device=settings.DETECTOR_DEVICE) if version else None
    except Exception:
        # A broken configuration must not kill the pool in a loop; each job will then fail with
        # a clear error code, and /readyz and the logs say why.
        logger.exception("could not load the active detector in process %d", os.getpid())
        detector = None
    finally:
        # Forked children must not share the parent's database connection.
        from django.db import connections

        connections.close_all()
    label = detector.model_version if detector else "none (loaded on first job)"
    logger.info("worker process %d ready with detector %s", os.getpid(), label)
    _prewarm_start()


# --- Pre-warm and heartbeat ------------------------------------------------------------------------

# This process's name in the heartbeats, its pre-warm thread and the event that stops it.
_worker_name = ""
_thread: threading.Thread | None = None
_stop = threading.Event()
# How long a stopping process waits for a beat in progress (it may be loading a model).
STOP_WAIT_SECONDS = 5


def _prewarm_start() -> None:
    """Start this pool process's pre-warm thread (a daemon: it never holds the process up)."""
    global _worker_name, _thread
    _worker_name = f"{socket.gethostname()}:{os.getpid()}"
    _stop.clear()
    _thread = threading.Thread(target=_prewarm_loop, name="detector-prewarm", daemon=True)
    _thread.start()


def _prewarm_loop() -> None:
    """Every WORKER_HEARTBEAT_SECONDS: load what the live rollout needs, say what is loaded.
    The first beat is at once, so a rollout started before this process finds it warm soon."""
    while not _stop.is_set():
        try:
            prewarm_once(worker=_worker_name)
        except Exception:
            # A database or broker hiccup, a version that fails to load: logged, tried again at
            # the next beat. This thread must never take the process down.
            logger.exception("pre-warm in process %d failed; trying again in %ss", os.getpid(), settings.WORKER_HEARTBEAT_SECONDS)
        finally:
            # The thread's own connection (Django's are per thread: the task's is never touched),
            # closed when broken or past CONN_MAX_AGE, as after a request.
            close_old_connections()
        # At least half a second: a zero in the settings must not spin this thread.
        _stop.wait(max(settings.WORKER_HEARTBEAT_SECONDS, 0.5))


def prewarm_once(*, worker: str) -> list[str]:
    """Load the active version and the live rollout's baseline and candidate into this process's
    detector cache (those already there cost nothing), then report the ones loaded. Returns
    their ids. The first candidate job then pays no model load (it is not cold), and a
    blue-green rollout can see every worker holding the candidate before it switches."""
    from detection import get_detector
    from registry.services import detector_spec, detector_version_active, worker_heartbeat
    from rollouts.services import rollout_live

    close_old_connections()
    wanted = {}
    active = detector_version_active()
    if active is not None:
        wanted[active.id] = active
    rollout = rollout_live()
    if rollout is not None:
        wanted.setdefault(rollout.baseline_id, rollout.baseline)
        wanted.setdefault(rollout.candidate_id, rollout.candidate)
    loaded = []
    for version in wanted.values():
        try:
            get_detector(detector_spec(version), device=settings.DETECTOR_DEVICE)
        except Exception:
            # Not reported as loaded: a blue-green rollout will not switch to a candidate that
            # fails to load here. The job that needs it fails with its own error code.
            logger.exception("process %d could not pre-load %s", os.getpid(), version.id)
            continue
        loaded.append(version.id)
    worker_heartbeat(worker=worker, versions=loaded)
    metrics.detector_versions_loaded(len(loaded))
    return loaded


@worker_process_shutdown.connect
def _prewarm_stop(**_: object) -> None:
    """A pool process that exits says so, rather than being counted as live until it goes stale
    (a killed one is not able to: it goes stale after registry.services.WORKER_STALE_SECONDS)."""
    if not _detects or not _worker_name:
        return
    _stop.set()
    if _thread is not None:
        # A beat in progress would write the heartbeat again after it is withdrawn.
        _thread.join(timeout=STOP_WAIT_SECONDS)
    from registry.services import worker_heartbeat_forget

    try:
        close_old_connections()
        worker_heartbeat_forget(worker=_worker_name)
    except Exception:
        logger.exception("process %d could not withdraw its heartbeat", os.getpid())
    finally:
        close_old_connections()


# --- Metrics (multi-process mode: core/metrics.py) --------------------------------------------------


@worker_init.connect
def _metrics_server_start(**_: object) -> None:
    """In the worker's parent process, with WORKER_METRICS_PORT set: serve the metrics of all its
    pool processes (the files they write in PROMETHEUS_MULTIPROC_DIR), so that each worker
    container is a scrape target of its own."""
    if not settings.WORKER_METRICS_PORT:
        return
    if not metrics.multiprocess_dir():
        logger.warning("WORKER_METRICS_PORT without PROMETHEUS_MULTIPROC_DIR: the pool processes' metrics will not show")
    from prometheus_client import start_http_server

    try:
        start_http_server(settings.WORKER_METRICS_PORT, registry=metrics.scrape_registry())
    except OSError:
        # A taken port must not stop the worker from taking jobs.
        logger.exception("could not serve metrics on port %s", settings.WORKER_METRICS_PORT)
        return
    logger.info("worker metrics on :%s/metrics", settings.WORKER_METRICS_PORT)


@worker_process_init.connect
def _metrics_reap_dead(**_: object) -> None:
    """A new pool process often replaces one that was killed (SIGKILL, the OOM killer, a hard
    time limit) and could not say so: drop the live series of every process that is gone."""
    metrics.dead_processes_reap()


@worker_process_shutdown.connect
def _metrics_process_exit(**_: object) -> None:
    """A pool process that exits drops its live series (its counts stay)."""
    metrics.process_dead(os.getpid())


# --- Logs: Celery's handlers and each task's context (core/logging.py) ------------------------------

# The message header that carries the id of the HTTP request behind a task (api.middleware).
HTTP_REQUEST_ID_HEADER = "http_request_id"


@after_setup_logger.connect
def _celery_handlers_formatted(logger=None, **_: object) -> None:
    """Celery keeps the root handler of settings.LOGGING (CELERY_WORKER_HIJACK_ROOT_LOGGER is
    False) but gives the multiprocessing logger one of its own: same format for it."""
    from celery.utils.log import get_multiprocessing_logger

    for target in (logger, get_multiprocessing_logger()):
        if target is not None:
            adopt_handlers(target, settings.LOG_FORMAT)


@after_setup_task_logger.connect
def _celery_task_handler_formatted(logger=None, **_: object) -> None:
    """Celery's task logger (celery.task, get_task_logger) has a handler and a format of its own
    (worker_task_log_format): same format for it, with the task in the context instead."""
    if logger is not None:
        adopt_handlers(logger, settings.LOG_FORMAT)


@before_task_publish.connect
def _request_id_header(headers=None, **_: object) -> None:
    """Every task published while a request or a task is in hand carries its request id: the
    detect -> deliver chain and the callbacks from the API, the chain's next step, shadow runs,
    callback retries from the workers. A header set by the publisher itself is kept (a retry
    copies its task's headers)."""
    request_id = log_context_get("http_request_id")
    if request_id and headers is not None:
        headers.setdefault(HTTP_REQUEST_ID_HEADER, request_id)


@task_prerun.connect
def _task_log_scope_open(task=None, task_id=None, **_: object) -> None:
    """A fresh log scope per task: the task and its id, and the request id of its header. The
    task adds its job's fields (jobs.logcontext) once it knows the job; task_postrun closes the
    scope, so nothing of one task is left on the lines of the next."""
    if task is None:
        return
    request = task.request
    header = getattr(request, HTTP_REQUEST_ID_HEADER, None) or (request.headers or {}).get(HTTP_REQUEST_ID_HEADER)
    request._log_scope = log_context_open(
        task=task.name, task_id=task_id, http_request_id=str(header)[:128] if header else None
    )


@task_postrun.connect
def _task_log_scope_close(task=None, **_: object) -> None:
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
