"""Liveness and readiness probes. Neither needs credentials; neither loads the model."""

from django.conf import settings
from django.db import connection
from django.http import JsonResponse

from celery import current_app as celery_app

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


CHECKS = {"database": _check_database, "broker": _check_broker, "storage": storage.storage_ping, "detector": _check_detector}


def readyz(request) -> JsonResponse:
    """200 when the database, the broker and the storage bucket answer and the active detector's
    weights check out; 503 naming what is not."""
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
