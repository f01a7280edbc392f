"""Liveness and readiness probes. Neither needs credentials; neither loads the model."""

import threading
import time

from celery import current_app as celery_app
from django.conf import settings
from django.db import connection
from django.http import JsonResponse

from registry.artifacts import artifact_readable
from registry.services import detector_version_active, detector_version_verify_weights
from storage import s3 as storage


def healthz(request) -> JsonResponse:
    """The process is up and serving requests."""
    return JsonResponse({"status": "ok"})


def _check_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _check_broker() -> None:
    # The URL is read from settings on each call so a probe always checks what is configured.
    with celery_app.connection_for_write(url=settings.CELERY_BROKER_URL) as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=3)


def _check_detector() -> None:
    """A version is active and its weights on disk match their registered checksums (hashing
    three small files; torch is not imported)."""
    version = detector_version_active()
    if version is None:
        raise RuntimeError("no detector version is active")
    if version.artifact_sha256:
        # An uploaded model: its file is in the bucket with its registered size (a HEAD request).
        artifact_readable(version)
        return
    detector_version_verify_weights(version)


# The storage check's last result and when it was had (time.monotonic), per process: a write
# to the store per probe would be one every few seconds from every worker of every instance.
_storage_last: dict = {"at": None, "error": None}
_storage_lock = threading.Lock()


def _check_storage() -> None:
    """The service can write to the store (storage_check_write: a small object put and
    deleted), not only read it: a full or read-only store answers reads. The result, good or
    bad, is reused for READYZ_STORAGE_CACHE_SECONDS."""
    with _storage_lock:
        at, error = _storage_last["at"], _storage_last["error"]
        if at is None or time.monotonic() - at >= settings.READYZ_STORAGE_CACHE_SECONDS:
            try:
                storage.storage_check_write()
                error = None
            except Exception as exc:  # reported by readyz; storage logged and counted it
                error = exc
            _storage_last.update(at=time.monotonic(), error=error)
    if error is not None:
        reason = getattr(error, "reason", "other")
        raise RuntimeError(f"cannot write to the store ({reason}): {type(error).__name__}: {error}")


def storage_check_forget() -> None:
    """Drop the cached storage result (tests; a probe right after a change of store)."""
    with _storage_lock:
        _storage_last.update(at=None, error=None)


CHECKS = {"database": _check_database, "broker": _check_broker, "storage": _check_storage, "detector": _check_detector}


def readyz(request) -> JsonResponse:
    """200 when the database and the broker answer, the store takes a write and the active
    detector's weights check out; 503 naming what is not."""
    checks = {}
    for name, check in CHECKS.items():
        try:
            check()
            checks[name] = {"ok": True}
        except Exception as exc:  # any failure of a dependency is "not ready", never a 500
            checks[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    down = [name for name, result in checks.items() if not result["ok"]]
    body = {"status": "unavailable" if down else "ok", "down": down, "checks": checks}
    return JsonResponse(body, status=503 if down else 200)
