"""Figures of jobs over a window: per rollout variant (guardrails, the rollout's page) and per
detector version (stats, dashboard). Read from the job rows with indexed filters on finished_at.

Latency figures leave out cold jobs (the detector was loaded for them) and failed ones: a
candidate is not judged on its load time (pitfall: cold starts counted against the candidate).
"""

import datetime as dt
import math
from collections.abc import Sequence
from typing import Any

from django.db.models import Avg, Count, Q, QuerySet
from django.utils import timezone

from .models import Image, JobStatus, ShadowRun, ShadowStatus


def percentile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank percentile (q from 0 to 100) of ``values``; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return float(ordered[rank - 1])


def job_figures(jobs: QuerySet[Image]) -> dict[str, Any]:
    """Counts, error rate, detection-time percentiles and faces per photo of finished jobs."""
    finished = jobs.filter(status__in=(JobStatus.COMPLETED, JobStatus.FAILED))
    counts = finished.aggregate(
        jobs=Count("id"),
        failed=Count("id", filter=Q(status=JobStatus.FAILED)),
        faces_per_photo=Avg("face_count", filter=Q(status=JobStatus.COMPLETED)),
    )
    latencies = list(
        finished.filter(status=JobStatus.COMPLETED, detector_cold=False, detection_ms__isnull=False).values_list("detection_ms", flat=True)
    )
    total = counts["jobs"]
    return {
        "jobs": total,
        "failed": counts["failed"],
        "error_rate": round(counts["failed"] / total, 4) if total else None,
        "p50_detection_ms": percentile(latencies, 50),
        "p95_detection_ms": percentile(latencies, 95),
        "latency_samples": len(latencies),
        "faces_per_photo": round(counts["faces_per_photo"], 3) if counts["faces_per_photo"] is not None else None,
    }


def agreement_figures(runs: QuerySet[ShadowRun]) -> dict[str, Any]:
    """Mean agreement (F1 at IoU >= 0.5) over the shadow runs compared, and how many there are."""
    compared = runs.filter(status=ShadowStatus.COMPLETED, agreement__isnull=False)
    result = compared.aggregate(pairs=Count("id"), mean=Avg("agreement"))
    return {"pairs": result["pairs"], "mean": round(result["mean"], 4) if result["mean"] is not None else None}


def rollout_figures(*, rollout, window_seconds: float, now: dt.datetime | None = None) -> dict[str, Any]:
    """Per variant, on the sliding window and since the start: what the guardrails judge and
    what the rollout's page shows. Both variants are read on the same window."""
    now = now or timezone.now()
    since = now - dt.timedelta(seconds=window_seconds)
    jobs = Image.objects.filter(rollout=rollout)
    runs = ShadowRun.objects.filter(rollout=rollout)
    figures: dict[str, Any] = {"window_seconds": window_seconds, "until": now.isoformat()}
    for span, start in (("window", since), ("since_start", None)):
        scoped = jobs.filter(finished_at__lte=now, **({"finished_at__gt": start} if start else {}))
        figures[span] = {
            variant: job_figures(scoped.filter(variant=variant)) for variant in ("baseline", "candidate")
        }
        figures[span]["agreement"] = agreement_figures(
            runs.filter(finished_at__lte=now, **({"finished_at__gt": start} if start else {}))
        )
    return figures
