"""Real job and shadow-run rows for the guardrail tests: what the workers would have written, put
in the database directly so a test decides the outcome (failed, slow, disagreeing) of each."""

import datetime as dt
import hashlib
import itertools

from django.utils import timezone

_serial = itertools.count()


def client():
    from clients.models import ApiClient

    return ApiClient.objects.create(name=f"rows-{timezone.now().timestamp()}-{next(_serial)}")


def jobs(rollout, variant: str, count: int, *, failed: int = 0, ms: int = 100, finished=None, version=None, owner=None):
    """``count`` finished jobs of ``rollout``'s ``variant`` (``failed`` of them failed), each
    taking ``ms`` of detection, finished at ``finished`` (default: now)."""
    from jobs.models import Image, JobStatus

    owner = owner or client()
    finished = finished or timezone.now()
    version = version or (rollout.candidate if variant == "candidate" else rollout.baseline)
    rows = []
    for position in range(count):
        n = next(_serial)
        is_failed = position < failed
        rows.append(
            Image(
                client=owner,
                request_id=f"row-{n}",
                original_key=f"originals/rows/{n}.png",
                original_content_type="image/png",
                original_size=1,
                original_sha256=hashlib.sha256(str(n).encode()).hexdigest(),
                detector_version=version,
                model_version=version.label,
                status=JobStatus.FAILED if is_failed else JobStatus.COMPLETED,
                error_code="internal_error" if is_failed else "",
                face_count=None if is_failed else 1,
                detection_ms=None if is_failed else ms,
                rollout=rollout,
                variant=variant if rollout is not None else "",
                started_at=finished - dt.timedelta(milliseconds=ms),
                finished_at=finished,
            )
        )
    return Image.objects.bulk_create(rows)


def shadow_runs(rollout, served_jobs, *, agreement: float, finished=None):
    """A completed baseline shadow run with this ``agreement`` for each of ``served_jobs`` (the
    candidate's, as a canary samples them)."""
    from jobs.models import ShadowRun, ShadowStatus

    finished = finished or timezone.now()
    return ShadowRun.objects.bulk_create(
        ShadowRun(
            job=job,
            rollout=rollout,
            detector_version=rollout.baseline,
            variant="baseline",
            status=ShadowStatus.COMPLETED,
            faces=[],
            face_count=1,
            detection_ms=100,
            agreement=agreement,
            finished_at=finished,
        )
        for job in served_jobs
    )
