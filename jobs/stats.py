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

from django.db import connection
from django.db.models import Aggregate, Avg, Count, FloatField, Func, Q, QuerySet, Sum, Value
from django.db.models.functions import Floor, Least
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


def rollout_guardrail_figures(*, rollout, now: dt.datetime | None = None, evaluation: bool = True) -> dict[str, Any]:
    """A rollout's figures on its guardrails' window (Rollout.window_seconds): rollout_figures,
    and with ``evaluation`` what the verdict needs besides (rollout_evaluation_figures). The one
    read of them for the beat task, the API, the dashboard and the shell command.

    The window ends at ``now``; by default now for a live rollout, and for an ended one the
    moment it ended (a window ending now would be empty)."""
    now = now or rollout.ended_at or timezone.now()
    figures = rollout_figures(rollout=rollout, window_seconds=rollout.window_seconds, now=now)
    if evaluation:
        figures.update(rollout_evaluation_figures(rollout=rollout, window_seconds=rollout.window_seconds, now=now))
    return figures


# --- Per detector version, in time buckets (GET /api/v1/models/{id}/stats/, the dashboard) ---------

MIN_WINDOW_SECONDS = 60
MAX_WINDOW_SECONDS = 30 * 24 * 3600
DEFAULT_BUCKETS = 60
MAX_BUCKETS = 240


class _PercentileDisc(Aggregate):
    """PostgreSQL's nearest-rank percentile (the value at rank ceil(q * n), as ``percentile``)."""

    function = "PERCENTILE_DISC"
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = FloatField()

    def __init__(self, expression, *, fraction: float, **extra):
        # A constant of ours, written into the SQL: never a request's value.
        super().__init__(expression, fraction=repr(float(fraction)), **extra)


class _EpochSeconds(Func):
    """Seconds since 1970 of a timestamp (PostgreSQL)."""

    template = "EXTRACT(EPOCH FROM %(expressions)s)"
    output_field = FloatField()


def _warm(completed: str) -> Q:
    # What latency and CPU figures are read from: completed, measured, not a cold start.
    return Q(status=completed, detector_cold=False)


def version_window_jobs(*, version_id: str, since: dt.datetime, until: dt.datetime) -> QuerySet[Image]:
    """The version's jobs finished in (since, until]: a range on the (detector_version,
    finished_at) index, never a scan of the table."""
    return Image.objects.filter(
        detector_version_id=version_id,
        finished_at__gt=since,
        finished_at__lte=until,
        status__in=(JobStatus.COMPLETED, JobStatus.FAILED),
    ).order_by()


def _bucket_figures(raw: dict[str, Any], *, seconds: float) -> dict[str, Any]:
    """The published figures of one span (a bucket or the whole window) from its sums."""
    jobs, failed, cpu_samples = raw["jobs"], raw["failed"], raw["cpu_samples"]
    faces = raw["faces_per_photo"]
    return {
        "jobs": jobs,
        "failed": failed,
        "jobs_per_minute": round(jobs / (seconds / 60), 3),
        "error_rate": round(failed / jobs, 4) if jobs else None,
        "p50_detection_ms": None if raw["p50"] is None else float(raw["p50"]),
        "p95_detection_ms": None if raw["p95"] is None else float(raw["p95"]),
        "latency_samples": raw["latency_samples"],
        "faces_per_photo": round(float(faces), 3) if faces is not None else None,
        "cpu_samples": cpu_samples,
        # CPU-seconds per 1,000 detections: (sum ms / 1000) / n * 1000, the mean in ms.
        "cpu_seconds_per_1000": round(raw["cpu_ms"] / cpu_samples, 3) if cpu_samples else None,
    }


def _empty_raw() -> dict[str, Any]:
    return {"jobs": 0, "failed": 0, "faces_per_photo": None, "p50": None, "p95": None, "latency_samples": 0, "cpu_ms": 0, "cpu_samples": 0}


def _aggregates() -> dict[str, Aggregate]:
    warm = _warm(JobStatus.COMPLETED)
    measured = warm & Q(detection_ms__isnull=False)
    cpu = warm & Q(detection_cpu_ms__isnull=False)
    return {
        "jobs": Count("id"),
        "failed": Count("id", filter=Q(status=JobStatus.FAILED)),
        "faces_per_photo": Avg("face_count", filter=Q(status=JobStatus.COMPLETED)),
        "p50": _PercentileDisc("detection_ms", fraction=0.5, filter=measured),
        "p95": _PercentileDisc("detection_ms", fraction=0.95, filter=measured),
        "latency_samples": Count("id", filter=measured),
        "cpu_ms": Sum("detection_cpu_ms", filter=cpu, default=0),
        "cpu_samples": Count("id", filter=cpu),
    }


def _raw_in_sql(jobs: QuerySet[Image], *, since: dt.datetime, width: float, buckets: int) -> tuple[dict, dict[int, dict]]:
    """(whole window, {bucket: sums}) in two grouped queries: PostgreSQL does the percentiles
    (PERCENTILE_DISC), so no row leaves the database."""
    bucket = Least(Floor((_EpochSeconds("finished_at") - Value(since.timestamp())) / Value(width)), Value(float(buckets - 1)))
    total = jobs.aggregate(**_aggregates())
    per_bucket = {
        int(row.pop("bucket")): row for row in jobs.annotate(bucket=bucket).values("bucket").annotate(**_aggregates()).order_by("bucket")
    }
    return total, per_bucket


def _raw_in_python(jobs: QuerySet[Image], *, since: dt.datetime, width: float, buckets: int) -> tuple[dict, dict[int, dict]]:
    """The same sums, read row by row (SQLite, the embedded stack of `make up`: no PERCENTILE_DISC)."""
    fields = ("finished_at", "status", "detector_cold", "detection_ms", "detection_cpu_ms", "face_count")
    spans: dict[Any, dict[str, list]] = {}
    for finished_at, status, cold, ms, cpu_ms, faces in jobs.values_list(*fields):
        index = min(math.floor((finished_at - since).total_seconds() / width), buckets - 1)
        for key in ("total", index):
            span = spans.setdefault(key, {"status": [], "ms": [], "cpu": [], "faces": []})
            span["status"].append(status)
            if status == JobStatus.COMPLETED:
                if faces is not None:
                    span["faces"].append(faces)
                if not cold and ms is not None:
                    span["ms"].append(ms)
                if not cold and cpu_ms is not None:
                    span["cpu"].append(cpu_ms)

    def sums(span: dict[str, list] | None) -> dict[str, Any]:
        if span is None:
            return _empty_raw()
        return {
            "jobs": len(span["status"]),
            "failed": span["status"].count(JobStatus.FAILED),
            "faces_per_photo": sum(span["faces"]) / len(span["faces"]) if span["faces"] else None,
            "p50": percentile(span["ms"], 50),
            "p95": percentile(span["ms"], 95),
            "latency_samples": len(span["ms"]),
            "cpu_ms": sum(span["cpu"]),
            "cpu_samples": len(span["cpu"]),
        }

    return sums(spans.get("total")), {key: sums(span) for key, span in spans.items() if key != "total"}


def version_stats(
    *, version_id: str, window_seconds: int, buckets: int = DEFAULT_BUCKETS, now: dt.datetime | None = None
) -> dict[str, Any]:
    """A version's figures over the window that ends ``now``, as a whole and in ``buckets``
    equal time buckets (oldest first; a bucket holds the jobs that finished in it):

    jobs (finished: completed or failed), jobs_per_minute, failed, error_rate, p50 and p95
    detection time (ms, nearest rank, completed warm jobs: a cold load is not the detector's
    speed), faces_per_photo (completed jobs), and cpu_seconds_per_1000 detections (CPU time
    measured around the detector, warm jobs that recorded it). A figure with nothing to read
    from is null. Two indexed queries on PostgreSQL, whatever the window.
    """
    if not MIN_WINDOW_SECONDS <= window_seconds <= MAX_WINDOW_SECONDS:
        raise ValueError(f"window_seconds must be from {MIN_WINDOW_SECONDS} to {MAX_WINDOW_SECONDS}")
    if not 1 <= buckets <= MAX_BUCKETS:
        raise ValueError(f"buckets must be from 1 to {MAX_BUCKETS}")
    now = now or timezone.now()
    since = now - dt.timedelta(seconds=window_seconds)
    width = window_seconds / buckets
    jobs = version_window_jobs(version_id=version_id, since=since, until=now)
    read = _raw_in_sql if connection.vendor == "postgresql" else _raw_in_python
    total, per_bucket = read(jobs, since=since, width=width, buckets=buckets)
    return {
        "version": version_id,
        "window_seconds": window_seconds,
        "bucket_seconds": width,
        "since": since.isoformat(),
        "until": now.isoformat(),
        "totals": _bucket_figures(total, seconds=window_seconds),
        "buckets": [
            {
                "start": (since + dt.timedelta(seconds=index * width)).isoformat(),
                "end": (now if index == buckets - 1 else since + dt.timedelta(seconds=(index + 1) * width)).isoformat(),
                **_bucket_figures(per_bucket.get(index) or _empty_raw(), seconds=width),
            }
            for index in range(buckets)
        ],
    }
