"""Worker process lifecycle: import torch once in the parent, load the detector once per child."""

import logging
import os

from celery.signals import worker_init, worker_process_init
from django.conf import settings

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
