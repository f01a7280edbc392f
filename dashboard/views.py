"""/dashboard/: what each detector version does over a chosen window, for staff (the admin's
login). Jobs per minute, p50 and p95 detection time, error rate, faces per photo and CPU-seconds
per 1,000 detections, per version, as server-drawn SVG charts; during a live rollout, the
baseline against the candidate on the guardrails' window, the thresholds drawn on the charts,
and the rollout's event log beside them.

Every figure comes from jobs.stats (indexed reads of the job rows); the verdicts shown are
rollouts.guardrails.rollout_verdict's own, on the figures the beat task reads
(jobs.stats.rollout_guardrail_figures).
"""

import datetime as dt
from functools import wraps
from typing import Any

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.utils.safestring import mark_safe
from django.views.decorators.cache import never_cache

from jobs import stats as job_stats
from registry import selectors as registry_selectors
from rollouts import guardrails as rollout_guardrails
from rollouts.models import Rollout, RolloutMode
from rollouts.services import rollout_live

from . import charts

# The windows offered as links: (seconds, label). Any window from a minute to 30 days may be
# asked for with ?window=SECONDS.
WINDOWS = ((900, "15 minutes"), (3600, "hour"), (86400, "day"), (7 * 86400, "week"))
DEFAULT_WINDOW = 3600
BUCKETS = job_stats.DEFAULT_BUCKETS
EVENTS_SHOWN = 40
MODE_NAMES = {RolloutMode.CANARY: "Canary", RolloutMode.AB: "A/B test", RolloutMode.SHADOW: "Shadow", RolloutMode.BLUE_GREEN: "Blue-green"}
DASH = "–"


def staff_required(view):
    """Staff only, through the admin's login: anonymous visitors are sent to log in, signed-in
    users who are not staff are refused (403)."""

    @wraps(view)
    def guarded(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path(), reverse("admin:login"))
        if not (request.user.is_active and request.user.is_staff):
            raise PermissionDenied("The dashboard is for staff.")
        return view(request, *args, **kwargs)

    return guarded


def _duration(seconds: float) -> str:
    """3600 -> "1 hour", 900 -> "15 minutes", 90 -> "90 seconds"."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            n = int(seconds // size)
            return f"{n} {unit}{'s' if n != 1 else ''}"
    if seconds > 2 * 3600:
        return f"{seconds / 3600:.1f} hours"
    return f"{seconds:g} seconds"


def _ms(value: float | None) -> str:
    return DASH if value is None else f"{value:.0f} ms"


def _pct(value: float | None) -> str:
    return DASH if value is None else f"{value * 100:.1f} %"


def _num(value: float | None, decimals: int = 2) -> str:
    return DASH if value is None else f"{value:.{decimals}f}"


def _parse_window(raw: str | None) -> int | None:
    if raw is None or raw == "":
        return DEFAULT_WINDOW
    if not raw.isdigit():
        return None
    window = int(raw)
    return window if job_stats.MIN_WINDOW_SECONDS <= window <= job_stats.MAX_WINDOW_SECONDS else None


# --- The rollout panel ----------------------------------------------------------------------------


def _rollout_panel(rollout: Rollout, now: dt.datetime) -> dict[str, Any]:
    """The live rollout's guardrail window, per side, with each guardrail's verdict now: the
    figures and the verdict the beat task reads and acts on (never re-derived here)."""
    figures = job_stats.rollout_guardrail_figures(rollout=rollout, now=now)
    base, cand = figures["window"]["baseline"], figures["window"]["candidate"]
    verdict = rollout_guardrails.rollout_verdict(rollout, figures)
    reference, source = rollout_guardrails.verdict_baseline(rollout, figures)
    if reference is None:
        reference = base
    agreement = figures["window"]["agreement"]
    rules = rollout.guardrails
    rows = [
        {
            "label": "Jobs",
            "baseline": str(base["jobs"]),
            "candidate": str(cand["jobs"]),
            "rule": f"≥ {rollout.guardrail_setting('min_jobs')} each",
        },
        {
            "label": "Error rate",
            "baseline": _pct(base["error_rate"]),
            "candidate": _pct(cand["error_rate"]),
            "rule": f"≤ {_pct(rules['error_rate_max'])}" if "error_rate_max" in rules else "",
        },
        {
            "label": "p95 time",
            "baseline": _ms(base["p95_detection_ms"]),
            "candidate": _ms(cand["p95_detection_ms"]),
            "rule": f"≤ {rules['p95_latency_ratio_max']:g} × baseline" if "p95_latency_ratio_max" in rules else "",
        },
        {"label": "p50 time", "baseline": _ms(base["p50_detection_ms"]), "candidate": _ms(cand["p50_detection_ms"]), "rule": ""},
        {"label": "Faces / photo", "baseline": _num(base["faces_per_photo"]), "candidate": _num(cand["faces_per_photo"]), "rule": ""},
        # Agreement compares the two sides: one figure for both columns.
        {
            "label": "Agreement",
            "both": f"F1 {_num(agreement['mean'], 3)} over {agreement['pairs']} pairs",
            "rule": f"≥ {rules['agreement_min']:g}" if "agreement_min" in rules else "",
        },
    ]
    stage = rollout.current_stage
    events = [
        {
            "at": event.at,
            "actor": event.actor,
            "action": event.action,
            "status": " → ".join(filter(None, (event.from_status, event.to_status))) if event.to_status != event.from_status else "",
            "weight": f"{event.from_weight} → {event.to_weight} %"
            if event.to_weight is not None and event.to_weight != event.from_weight
            else "",
            "reason": event.reason,
        }
        for event in rollout.events.order_by("-at", "-id")[:EVENTS_SHOWN]
    ]
    return {
        "rollout": rollout,
        "mode": MODE_NAMES.get(rollout.mode, rollout.mode),
        "stage": f"stage {stage.label}" if stage is not None else None,
        "window": _duration(rollout.window_seconds),
        "rows": rows,
        "checks": [{"name": c.guardrail, "outcome": c.outcome, "detail": c.detail} for c in verdict.checks],
        "outcome": verdict.outcome if verdict.checks else None,
        "events": events,
        "baseline_p95": reference.get("p95_detection_ms") if reference else None,
        "baseline_source": source,
    }


# --- Charts ---------------------------------------------------------------------------------------


def _points(stats: dict[str, Any], key: str, scale: float = 1.0) -> list[tuple[float, float | None]]:
    """(bucket middle, value) for each bucket of a version's stats."""
    points = []
    for bucket in stats["buckets"]:
        start, end = dt.datetime.fromisoformat(bucket["start"]), dt.datetime.fromisoformat(bucket["end"])
        value = bucket[key]
        points.append(((start.timestamp() + end.timestamp()) / 2, None if value is None else value * scale))
    return points


def _charts(shown: list[dict[str, Any]], *, since: dt.datetime, until: dt.datetime, panel: dict | None) -> list[dict[str, str]]:
    x0, x1 = since.timestamp(), until.timestamp()
    # viewBox widths near the widths the page gives the charts (with the rollout column beside
    # them or without), so text is drawn at about its own size.
    small, wide = (charts.WIDTH, 900) if panel is not None else (640, 1320)

    def series(key: str, scale: float = 1.0, dashed: bool = False, suffix: str = "", dot_zeros: bool = True) -> list[charts.Series]:
        return [
            charts.Series(
                name=v["name"] + suffix,
                key=v["id"],
                colour=v["colour"],
                points=_points(v["stats"], key, scale),
                dashed=dashed,
                dot_zeros=dot_zeros,
            )
            for v in shown
        ]

    legend = [charts.LegendEntry(v["name"], v["colour"]) for v in shown]
    latency_thresholds, error_thresholds = [], []
    if panel is not None:
        rules = panel["rollout"].guardrails
        ratio, base_p95 = rules.get("p95_latency_ratio_max"), panel["baseline_p95"]
        if ratio is not None and base_p95 is not None:
            latency_thresholds.append(
                charts.Threshold(
                    ratio * base_p95, f"guardrail: candidate p95 ≤ {ratio:g} × baseline {base_p95:.0f} ms = {ratio * base_p95:.0f} ms"
                )
            )
        if rules.get("error_rate_max") is not None:
            error_thresholds.append(
                charts.Threshold(rules["error_rate_max"] * 100, f"guardrail: candidate error rate ≤ {rules['error_rate_max'] * 100:g} %")
            )

    def chart(title: str, drawn: list[charts.Series], **options) -> charts.Chart:
        return charts.Chart(**{"title": title, "series": drawn, "x_start": x0, "x_end": x1, "legend": legend, "width": small, **options})

    grey = "#4B5563"
    latency = chart(
        "Detection time, ms",
        [*series("p95_detection_ms", suffix=" p95"), *series("p50_detection_ms", dashed=True, suffix=" p50")],
        thresholds=latency_thresholds,
        legend=[*legend, charts.LegendEntry("p95", grey), charts.LegendEntry("p50", grey, dashed=True)],
        width=wide,
        height=250,
    )
    specs = [  # (heading, note, chart, card size)
        (
            "Detection time (ms): p95 solid, p50 dashed",
            "Completed jobs; a cold start (the detector loaded for the job) is left out.",
            latency,
            "wide",
        ),
        (
            "Jobs per minute",
            "Jobs finished, completed or failed.",
            chart("Jobs per minute", series("jobs_per_minute", dot_zeros=False)),
            "",
        ),
        (
            "Error rate (%)",
            "Failed jobs among those finished.",
            chart("Error rate, %", series("error_rate", scale=100), thresholds=error_thresholds, y_min_top=1),
            "",
        ),
        ("Faces per photo", "Mean faces found per completed job.", chart("Faces per photo", series("faces_per_photo")), ""),
        (
            "CPU-seconds per 1,000 detections",
            "CPU time of the detector itself, all threads, warm jobs.",
            chart("CPU-seconds per 1,000 detections", series("cpu_seconds_per_1000")),
            "",
        ),
    ]
    # charts.render escapes every name and label it writes: its SVG is safe to put in the page as is.
    return [{"title": title, "note": note, "svg": mark_safe(charts.render(c)), "size": size} for title, note, c, size in specs]


# --- The page -------------------------------------------------------------------------------------


def _shown_versions(*, window: int, now: dt.datetime, rollout: Rollout | None) -> list[dict[str, Any]]:
    """The versions with jobs in the window, and those that matter without any (the active one,
    a live rollout's two), in the registry's order, one colour each."""
    active_id = registry_selectors.detector_version_active_id()
    roles = {active_id: "active"} if active_id else {}
    if rollout is not None:
        roles.update({rollout.baseline_id: "baseline", rollout.candidate_id: "candidate"})
    shown = []
    for version in registry_selectors.detector_version_list():
        stats = job_stats.version_stats(version_id=version.id, window_seconds=window, buckets=BUCKETS, now=now)
        if stats["totals"]["jobs"] or version.id in roles:
            shown.append({"id": version.id, "label": version.label, "role": roles.get(version.id, ""), "stats": stats})
    for index, entry in enumerate(shown):
        entry["colour"] = charts.PALETTE[index % len(charts.PALETTE)]
        entry["name"] = entry["id"] + (f" ({entry['role']})" if entry["role"] in ("baseline", "candidate") else "")
        totals = entry["stats"]["totals"]
        entry["cells"] = [
            str(totals["jobs"]),
            _num(totals["jobs_per_minute"]),
            _ms(totals["p50_detection_ms"]),
            _ms(totals["p95_detection_ms"]),
            _pct(totals["error_rate"]),
            _num(totals["faces_per_photo"]),
            _num(totals["cpu_seconds_per_1000"], 1),
        ]
    return shown


@never_cache
@staff_required
def dashboard(request: HttpRequest) -> HttpResponse:
    window = _parse_window(request.GET.get("window"))
    if window is None:
        message = f"window: whole seconds from {job_stats.MIN_WINDOW_SECONDS} to {job_stats.MAX_WINDOW_SECONDS} (30 days)."
        return render(request, "dashboard/bad_request.html", {"message": message, "windows": WINDOWS}, status=400)
    now = timezone.now()
    since = now - dt.timedelta(seconds=window)
    rollout = rollout_live()
    panel = _rollout_panel(rollout, now) if rollout is not None else None
    shown = _shown_versions(window=window, now=now, rollout=rollout)
    context = {
        "window": window,
        "window_label": _duration(window),
        "bucket_label": _duration(round(window / BUCKETS, 3)),
        "windows": [{"seconds": s, "label": label, "current": s == window} for s, label in WINDOWS],
        "since": since,
        "until": now,
        "versions": shown,
        "charts": _charts(shown, since=since, until=now, panel=panel),
        "panel": panel,
    }
    return render(request, "dashboard/index.html", context)
