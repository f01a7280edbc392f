"""Figures of jobs over a window: per rollout variant (guardrails, the rollout's page) and per
detector version (stats, dashboard). Read from the job rows with indexed filters on finished_at;
in shadow mode the candidate serves no job, so its figures are read from its shadow runs instead
(job_figures and shadow_run_figures give the same shape).

Latency figures leave out cold jobs (the detector was loaded for them) and failed ones: a
candidate is not judged on its load time (pitfall: cold starts counted against the candidate).
"""

import datetime as dt
import math
from collections.abc import Sequence
from typing import Any

from django.db.models import Avg, Count, Q, QuerySet
from django.utils import timezone

from rollouts.models import RolloutMode

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
    return _figures(jobs, completed=JobStatus.COMPLETED, failed=JobStatus.FAILED)


def shadow_run_figures(runs: QuerySet[ShadowRun]) -> dict[str, Any]:
    """The same figures as job_figures, of finished shadow runs (each run counts as a job)."""
    return _figures(runs, completed=ShadowStatus.COMPLETED, failed=ShadowStatus.FAILED)


def _figures(rows: QuerySet, *, completed: str, failed: str) -> dict[str, Any]:
    # Jobs and shadow runs share the fields read here: status, face_count, detection_ms, detector_cold.
    finished = rows.filter(status__in=(completed, failed))
    counts = finished.aggregate(
        jobs=Count("id"),
        failed=Count("id", filter=Q(status=failed)),
        faces_per_photo=Avg("face_count", filter=Q(status=completed)),
    )
    latencies = list(
        finished.filter(status=completed, detector_cold=False, detection_ms__isnull=False).values_list("detection_ms", flat=True)
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
    what the rollout's page shows. Both variants are read on the same window. In shadow mode
    the candidate's figures are those of its shadow runs (it serves no job)."""
    now = now or timezone.now()
    since = now - dt.timedelta(seconds=window_seconds)
    jobs = Image.objects.filter(rollout=rollout)
    runs = ShadowRun.objects.filter(rollout=rollout)
    figures: dict[str, Any] = {"window_seconds": window_seconds, "until": now.isoformat()}
    for span, start in (("window", since), ("since_start", None)):
        within = {"finished_at__lte": now, **({"finished_at__gt": start} if start else {})}
        scoped_jobs, scoped_runs = jobs.filter(**within), runs.filter(**within)
        figures[span] = {variant: job_figures(scoped_jobs.filter(variant=variant)) for variant in ("baseline", "candidate")}
        if rollout.mode == RolloutMode.SHADOW:
            figures[span]["candidate"] = shadow_run_figures(scoped_runs.filter(variant="candidate"))
        figures[span]["agreement"] = agreement_figures(scoped_runs)
    return figures


def rollout_evaluation_figures(*, rollout, window_seconds: float, now: dt.datetime | None = None) -> dict[str, Any]:
    """What the guardrails' evaluation needs besides rollout_figures (merged into them by the
    beat task; rollouts never read the job tables):

    - ``stage`` (a canary): the candidate's jobs finished since the current stage started,
      ``{"since", "candidate_jobs"}``, for the stage's min_jobs.
    - ``before_switch`` (a blue-green rollout after the switch): the baseline no longer serves,
      so its latency is read on the window that ended at the switch, from every job its version
      detected then (before the rollout started too: the reference, not the rollout's share),
      ``{"until", "baseline": job_figures}``.
    """
    now = now or timezone.now()
    extra: dict[str, Any] = {}
    if rollout.mode == RolloutMode.CANARY and rollout.stage_started_at is not None:
        finished = Image.objects.filter(
            rollout=rollout,
            variant="candidate",
            status__in=(JobStatus.COMPLETED, JobStatus.FAILED),
            finished_at__gt=rollout.stage_started_at,
            finished_at__lte=now,
        )
        extra["stage"] = {"since": rollout.stage_started_at.isoformat(), "candidate_jobs": finished.count()}
    if rollout.mode == RolloutMode.BLUE_GREEN and rollout.switched_at is not None:
        until = rollout.switched_at
        reference = Image.objects.filter(
            detector_version_id=rollout.baseline_id,
            finished_at__gt=until - dt.timedelta(seconds=window_seconds),
            finished_at__lte=until,
        )
        extra["before_switch"] = {"until": until.isoformat(), "window_seconds": window_seconds, "baseline": job_figures(reference)}
    return extra
