"""Worker process lifecycle: import torch once in the parent, load the detector once per child,
and keep the live rollout's versions loaded (pre-warm), reporting them in a heartbeat."""

import logging
import os
import socket
import threading

from celery.signals import worker_init, worker_process_init, worker_process_shutdown
from django.conf import settings
from django.db import close_old_connections

logger = logging.getLogger(__name__)

# Set in the parent worker process, inherited by its forked children: whether this worker takes
# detection jobs. A worker on the delivery queue alone never loads torch.
_detects = False


@worker_init.connect
def _import_torch_before_fork(sender=None, **_: object) -> None:
    global _detects
    queues = set(sender.app.amqp.queues.consume_from or sender.app.amqp.queues) if sender is not None else set()
    _detects = settings.CELERY_QUEUE_DETECT in queues
    if not _detects:
        return
    # Importing torch takes seconds; doing it once in the parent lets every forked child start
    # with it already in memory. No model is loaded and no thread started here.
    import facenet_pytorch.models.mtcnn  # noqa: F401
    import torch  # noqa: F401


@worker_process_init.connect
def _load_detector(**_: object) -> None:
    """Load the configured detector in each worker process, before its first task."""
    if not _detects:
        logger.info("worker process %d ready, without a detector (delivery only)", os.getpid())
        return
    from detection import get_detector
    from registry.services import detector_spec, detector_version_active

    if settings.DETECTOR_TORCH_THREADS:
        import torch

        torch.set_num_threads(settings.DETECTOR_TORCH_THREADS)
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
