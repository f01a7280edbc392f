"""The service's Prometheus metrics, for every room to record into (docs/observability.md).

One call per event, at the place where the event happens: a job started, detected, finished;
a callback attempt; a refused upload. The recording functions take plain values or a job row
(``jobs.models.Image`` or anything with its attributes), so this module imports nothing of the
project's.

Several processes record (gunicorn workers, Celery pool processes, a pool process that replaced
a crashed one): with PROMETHEUS_MULTIPROC_DIR set, each writes its own files in that directory
and a scrape adds them up (``scrape_registry``), the files of dead processes included, so a
counter never goes back when a process dies. prometheus_client picks the mode when it is first
imported, from the variable's mere presence: it must be set (or absent) before then.

Labels are bounded: a version id, a variant, a status, an error code, an outcome, a queue name.
Never a job id, a request id, a client or a cohort.
"""

import glob
import os
import re
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime

# METRICS_ENABLED=false (env.env) records nothing: every function below returns at once, no
# process writes a file, and GET /metrics shows no fda_ series but those read at scrape time
# (queue depths, pending deliveries). It is the "off" of bench/metrics_overhead.py. Read from the
# environment, like the directory, because it must be known before prometheus_client is imported;
# the same words as django-environ's env.bool.
ENABLED = os.environ.get("METRICS_ENABLED", "true").strip().lower() in ("true", "on", "ok", "y", "yes", "1")

# An empty value (env.env's default) means single-process mode; prometheus_client would take
# its presence for a directory named "" and write its files into the working directory.
if not ENABLED or not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
else:
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram  # noqa: E402
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead  # noqa: E402

# Seconds, for a workload of tens of milliseconds (a warm detection of a small photo) to tens
# of seconds (a large photo on a busy CPU, a queue that backs up, a slow callback receiver).
BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0)

# The variant of a job outside a rollout.
NO_VARIANT = "none"
# The error code of a completed job.
NO_ERROR = "none"

DETECTION_SECONDS = Histogram(
    "fda_detection_seconds",
    "Time the detector took on one photo (jobs and shadow runs), by detector version and variant.",
    ["model_version", "variant"],
    buckets=BUCKETS,
)
QUEUE_WAIT_SECONDS = Histogram(
    "fda_queue_wait_seconds",
    "Time from a job's acceptance to the start of its first detection attempt.",
    ["model_version", "variant"],
    buckets=BUCKETS,
)
JOB_SECONDS = Histogram(
    "fda_job_seconds",
    "Time from a job's acceptance to the delivery of its callback (jobs with a callback_url).",
    ["model_version", "variant"],
    buckets=BUCKETS,
)
JOBS_FINISHED = Counter(
    "fda_jobs_finished_total",
    "Jobs that reached a final status (completed or failed), by version, variant and error code.",
    ["model_version", "variant", "status", "error_code"],
)
CALLBACK_ATTEMPTS = Counter(
    "fda_callback_attempts_total",
    "Callback POSTs by outcome: delivered, retry (will be tried again), failed (for good), refused (address not allowed).",
    ["outcome"],
)
UPLOADS_REFUSED = Counter(
    "fda_uploads_refused_total",
    "Uploads (POST /api/v1/images/) answered with a 4xx, by the error code of the answer.",
    ["reason"],
)
DETECTION_CPU_SECONDS = Counter(
    "fda_detection_cpu_seconds_total",
    "CPU seconds of the worker process (all its threads) spent in detection, by detector version.",
    ["model_version"],
)
STORAGE_ERRORS = Counter(
    "fda_storage_errors_total",
    "Calls to the object store that failed, by operation (put, get, delete, list, bucket, stat) and reason "
    "(unreachable, timeout, denied, no_bucket, full, server_error, client_error, other); a missing object is not one.",
    ["operation", "reason"],
)

BATCHES_FINISHED = Counter(
    "fda_batches_finished_total",
    "Batches (POST /api/v1/batches/) whose last item ended, by how they ended: completed or canceled.",
    ["status"],
)

CALLBACK_OUTCOMES = ("delivered", "retry", "failed", "refused")
STORAGE_OPERATIONS = ("put", "get", "delete", "list", "bucket", "stat")


def multiprocess_dir() -> str | None:
    """The shared directory of multi-process mode, or None in single-process mode."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def _variant(value: str) -> str:
    return value or NO_VARIANT


# --- Recording ------------------------------------------------------------------------------------


def job_started(job) -> None:
    """A job moved to processing: its queue wait, on the first attempt only (a retry or a
    redelivery would count the same wait again, longer)."""
    if not ENABLED or job.attempts != 1 or job.started_at is None:
        return
    waited = (job.started_at - job.created_at).total_seconds()
    QUEUE_WAIT_SECONDS.labels(job.detector_version_id, _variant(job.variant)).observe(max(waited, 0.0))


def job_finished(job) -> None:
    """A job reached completed or failed. Called once per terminal transition (after its
    transaction commits), so every finished job counts exactly once."""
    if not ENABLED:
        return
    JOBS_FINISHED.labels(job.detector_version_id, _variant(job.variant), job.status, job.error_code or NO_ERROR).inc()


@contextmanager
def detection_timed(*, model_version: str, variant: str) -> Iterator[None]:
    """Around one detector call: its wall time into fda_detection_seconds and the process's CPU
    time into fda_detection_cpu_seconds_total. A call that raises is not recorded."""
    if not ENABLED:
        yield
        return
    wall, cpu = time.monotonic(), time.process_time()
    yield
    DETECTION_CPU_SECONDS.labels(model_version).inc(max(time.process_time() - cpu, 0.0))
    DETECTION_SECONDS.labels(model_version, _variant(variant)).observe(time.monotonic() - wall)


def callback_attempted(*, outcome: str, job=None, delivered_at: datetime | None = None) -> None:
    """A callback POST and its outcome; ``job`` (given on a job's first delivered callback)
    adds its whole time, accepted to delivered, to fda_job_seconds."""
    if outcome not in CALLBACK_OUTCOMES:
        raise ValueError(f"unknown callback outcome {outcome!r}")
    if not ENABLED:
        return
    CALLBACK_ATTEMPTS.labels(outcome).inc()
    if job is not None and delivered_at is not None:
        seconds = (delivered_at - job.created_at).total_seconds()
        JOB_SECONDS.labels(job.detector_version_id, _variant(job.variant)).observe(max(seconds, 0.0))


def batch_finished(*, status: str) -> None:
    """A batch ended (once per batch: its end is a conditional UPDATE that one caller wins)."""
    if not ENABLED:
        return
    BATCHES_FINISHED.labels(status).inc()


def upload_refused(*, reason: str) -> None:
    """An upload answered with a 4xx; ``reason`` is the error code of the answer."""
    if not ENABLED:
        return
    UPLOADS_REFUSED.labels(reason or "unknown").inc()


def storage_error(*, operation: str, reason: str) -> None:
    """A call to the object store failed; ``reason`` is one of storage.s3.STORAGE_ERROR_REASONS
    (anything else counts as "other", so the label stays bounded)."""
    if operation not in STORAGE_OPERATIONS:
        raise ValueError(f"unknown storage operation {operation!r}")
    if not ENABLED:
        return
    STORAGE_ERRORS.labels(operation, reason if reason in _STORAGE_REASONS else "other").inc()


# storage/s3.py's STORAGE_ERROR_REASONS (core imports nothing of the project's; a test checks they agree).
_STORAGE_REASONS = ("unreachable", "timeout", "denied", "no_bucket", "full", "server_error", "client_error", "other")


# Made on first use: a process that never loads a detector (the API, a delivery worker, the
# Celery parent) must not show a series of its own at zero.
_versions_loaded: Gauge | None = None
_versions_loaded_lock = threading.Lock()


def detector_versions_loaded(count: int) -> None:
    """How many detector versions this worker process holds loaded. Per process (the pid
    label); the series of a process that is gone is dropped (mark_process_dead)."""
    global _versions_loaded
    if not ENABLED:
        return
    with _versions_loaded_lock:
        if _versions_loaded is None:
            _versions_loaded = Gauge(
                "fda_detector_versions_loaded",
                "Detector versions loaded in this worker process (one series per live process).",
                multiprocess_mode="liveall",
            )
    _versions_loaded.set(count)


# --- Multi-process housekeeping ------------------------------------------------------------------

_LIVE_FILE = re.compile(r"^gauge_live\w*?_(\d+)\.db$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    try:
        # A killed child its parent has not reaped yet is a zombie: gone all the same.
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return True


def process_dead(pid: int) -> None:
    """Drop the live-gauge series of a process that exited (its counters and histograms stay:
    what it counted still happened)."""
    path = multiprocess_dir()
    if path:
        mark_process_dead(pid, path)


def dead_processes_reap() -> list[int]:
    """Mark dead every process that left live-gauge files but no longer runs (a pool process
    killed by SIGKILL or the OOM killer says nothing on its way out). Returns their pids."""
    path = multiprocess_dir()
    if not path:
        return []
    reaped = set()
    for name in map(os.path.basename, glob.glob(os.path.join(path, "gauge_live*_*.db"))):
        match = _LIVE_FILE.match(name)
        if match and int(match.group(1)) not in reaped and not _alive(int(match.group(1))):
            reaped.add(int(match.group(1)))
            mark_process_dead(int(match.group(1)), path)
    return sorted(reaped)


# --- Scraping ------------------------------------------------------------------------------------


class _AllProcesses:
    """Every process's files in the shared directory, the dead ones' live gauges dropped first."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._collector = MultiProcessCollector(None, path=path)

    def collect(self):
        dead_processes_reap()
        return self._collector.collect()


class _ThisProcess:
    """The default registry of this process (single-process mode)."""

    def collect(self):
        return REGISTRY.collect()


def scrape_registry(extra: Iterable = ()) -> CollectorRegistry:
    """A registry to expose: every process's series in multi-process mode (else this process's),
    plus ``extra`` collectors (read at scrape time, e.g. queue depth)."""
    registry = CollectorRegistry(auto_describe=False)
    path = multiprocess_dir()
    registry.register(_AllProcesses(path) if path else _ThisProcess())
    for collector in extra:
        registry.register(collector)
    return registry
