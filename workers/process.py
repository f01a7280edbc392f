"""A detection worker's processes: the active engine's runtime imported once in the parent
before it forks, and in each pool process the detector loaded once, with its share of the cores
and at a lower CPU priority. A worker on the delivery queue alone loads nothing."""

import logging
import os

from django.conf import settings
from django.db import connections

from core.system import usable_cores

logger = logging.getLogger(__name__)

# Set in the parent worker process, inherited by its forked children: whether this worker takes
# detection jobs. A worker on the delivery queue alone never loads torch.
_detects = False
# The worker's pool size (--concurrency), for the default thread count of each process.
_pool_size = 1


def detects() -> bool:
    """Whether this worker consumes the detection queue (known from worker_init on)."""
    return _detects


def parent_prepare(sender) -> None:
    """In the worker's parent, before it forks its pool: note whether it detects and its pool
    size, and import the active version's runtime so that every child starts with it."""
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


def child_load_detector() -> bool:
    """In a new pool process: load the active version's detector before the first task.
    Returns whether this process detects (the caller then starts its pre-warm)."""
    if not _detects:
        logger.info("worker process %d ready, without a detector (delivery only)", os.getpid())
        return False
    from detection import engines, get_detector
    from registry.services import detector_spec, detector_version_active

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
        connections.close_all()
    label = detector.model_version if detector else "none (loaded on first job)"
    logger.info("worker process %d ready with detector %s", os.getpid(), label)
    return True
