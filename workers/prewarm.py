"""Pre-warm and heartbeat: each detection pool process keeps the live rollout's versions loaded
and reports which it holds, every WORKER_HEARTBEAT_SECONDS, on a thread of its own. A rollout
counts the warm workers from those heartbeats; blue-green switches only when all hold the
candidate."""

import logging
import os
import socket
import threading

from django.conf import settings
from django.db import close_old_connections

from core import metrics

logger = logging.getLogger(__name__)

# This process's name in the heartbeats, its pre-warm thread and the event that stops it.
_worker_name = ""
_thread: threading.Thread | None = None
_stop = threading.Event()
# How long a stopping process waits for a beat in progress (it may be loading a model).
STOP_WAIT_SECONDS = 5


def prewarm_start() -> None:
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


def prewarm_stop() -> None:
    """A pool process that exits says so, rather than being counted as live until it goes stale
    (a killed one is not able to: it goes stale after registry.services.WORKER_STALE_SECONDS)."""
    if not _worker_name:
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
