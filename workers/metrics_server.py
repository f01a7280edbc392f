"""A worker's metrics (multi-process mode: core/metrics.py): served by the worker's parent for
all its pool processes, and the series of processes that are gone dropped."""

import logging
import os

from django.conf import settings

from core import metrics

logger = logging.getLogger(__name__)


def metrics_server_start() -> None:
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


def metrics_reap_dead() -> None:
    """A new pool process often replaces one that was killed (SIGKILL, the OOM killer, a hard
    time limit) and could not say so: drop the live series of every process that is gone."""
    metrics.dead_processes_reap()


def metrics_process_exit() -> None:
    """A pool process that exits drops its live series (its counts stay)."""
    metrics.process_dead(os.getpid())
