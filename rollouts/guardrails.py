"""The verdicts of a live rollout, taken by Celery beat (workers.tasks.evaluate_rollouts) on the
figures of a sliding window: a guardrail breached in enough evaluations in a row rolls the
rollout back by itself; a canary stage whose minimums are met advances; a blue-green rollout
switches once every live detection worker has the candidate loaded.

``judge`` is pure (figures in, verdict out) so it is tested on hand-made figures; the figures
themselves are read from the job rows by jobs.stats and handed in by the task (this app never
reads the jobs tables). ``rollout_verdict`` is the verdict of a rollout on its figures, the one
that every page showing a verdict shows; ``rollout_evaluate`` acts on it under the rollout's row
lock.

Each guardrail is judged on its own:

- ``p95_latency_ratio_max``: the candidate's p95 detection time over the baseline's, both on the
  same window. Needs ``min_jobs`` latency samples (warm, completed jobs) on each side.
- ``error_rate_max``: the candidate's share of failed jobs. Needs ``min_jobs`` jobs on each side.
- ``agreement_min``: mean agreement (F1 at IoU >= 0.5) of the window's shadow runs. Needs
  ``min_jobs`` compared pairs.

Below its minimum a guardrail is inconclusive: no breach is counted, and a clean streak is not
claimed either (the counter of breaches in a row is left as it is).
"""

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from callbacks.services import callback_delivery_enqueue

from .alerts import rollout_alert_create
from .models import DEFAULT_GUARDRAILS, Rollout, RolloutEvent, RolloutMode, RolloutStatus
from .services import rollout_advance, rollout_rollback, rollout_switch

logger = logging.getLogger(__name__)

GUARDRAILS_ACTOR = "system:guardrails"
STAGES_ACTOR = "system:stages"
# The order guardrails are judged and reported in.
THRESHOLDS = ("p95_latency_ratio_max", "error_rate_max", "agreement_min")

OK, BREACH, INCONCLUSIVE = "ok", "breach", "inconclusive"


@dataclass(frozen=True)
class Check:
    """One guardrail's outcome on one window."""

    guardrail: str
    outcome: str  # OK, BREACH or INCONCLUSIVE
    threshold: float
    value: float | None  # the figure compared with the threshold (None: not enough data)
    detail: str  # in words, with the numbers: the reason an event or a log line gives
    figures: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "guardrail": self.guardrail,
            "outcome": self.outcome,
            "threshold": self.threshold,
            "value": self.value,
            "detail": self.detail,
            **self.figures,
        }


@dataclass(frozen=True)
class Verdict:
    checks: tuple[Check, ...]

    @property
    def breaches(self) -> tuple[Check, ...]:
        return tuple(check for check in self.checks if check.outcome == BREACH)

    @property
    def outcome(self) -> str:
        """BREACH if any guardrail is breached; else INCONCLUSIVE if any could not be judged;
        else OK (also when the rollout has no thresholds: nothing to breach)."""
        outcomes = {check.outcome for check in self.checks}
        return BREACH if BREACH in outcomes else INCONCLUSIVE if INCONCLUSIVE in outcomes else OK

    @property
    def reason(self) -> str:
        """The breaches in words (for a breach), else every check's outcome."""
        return "; ".join(check.detail for check in (self.breaches or self.checks))

    def as_dict(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "checks": [check.as_dict() for check in self.checks]}


def _count(figures: dict[str, Any] | None, key: str) -> int:
    value = (figures or {}).get(key)
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def _too_few(sides: dict[str, int], minimum: int, what: str) -> str:
    short = [f"{side} {count}" for side, count in sides.items() if count < minimum]
    return f"{', '.join(short)} {what} on the window, fewer than min_jobs {minimum}"


def _latency(threshold: float, minimum: int, candidate: dict, baseline: dict, baseline_source: str) -> Check:
    name = "p95_latency_ratio_max"
    samples = {"candidate": _count(candidate, "latency_samples"), "baseline": _count(baseline, "latency_samples")}
    cand_p95, base_p95 = (candidate or {}).get("p95_detection_ms"), (baseline or {}).get("p95_detection_ms")
    numbers = {"candidate_p95_ms": cand_p95, "baseline_p95_ms": base_p95, **{f"{k}_samples": v for k, v in samples.items()}}
    if baseline_source != "window":
        numbers["baseline_from"] = baseline_source
    # Samples are warm, completed jobs (jobs.stats leaves out cold and failed ones): a p95 of a
    # handful of them flaps, so each side needs min_jobs of them.
    if min(samples.values()) < minimum or cand_p95 is None or base_p95 is None:
        return Check(name, INCONCLUSIVE, threshold, None, f"{name}: inconclusive, {_too_few(samples, minimum, 'latency samples')}", numbers)
    # A whole millisecond at least: a baseline that rounds to 0 ms must not divide by zero.
    ratio = round(float(cand_p95) / max(float(base_p95), 1.0), 3)
    words = f"candidate p95 {cand_p95:.0f} ms is {ratio:.2f}x the baseline's {base_p95:.0f} ms"
    if baseline_source != "window":
        words += f" ({baseline_source})"
    if ratio > threshold:
        return Check(name, BREACH, threshold, ratio, f"{name}: {words}, above {threshold:g}", numbers)
    return Check(name, OK, threshold, ratio, f"{name}: {words}, within {threshold:g}", numbers)


def _errors(threshold: float, minimum: int, candidate: dict, baseline: dict) -> Check:
    name = "error_rate_max"
    jobs = {"candidate": _count(candidate, "jobs"), "baseline": _count(baseline, "jobs")}
    failed = _count(candidate, "failed")
    numbers = {"candidate_jobs": jobs["candidate"], "candidate_failed": failed, "baseline_jobs": jobs["baseline"]}
    if min(jobs.values()) < minimum:
        return Check(name, INCONCLUSIVE, threshold, None, f"{name}: inconclusive, {_too_few(jobs, minimum, 'jobs')}", numbers)
    rate = round(failed / jobs["candidate"], 4)
    words = f"candidate failed {failed} of {jobs['candidate']} jobs ({rate:.1%})"
    if rate > threshold:
        return Check(name, BREACH, threshold, rate, f"{name}: {words}, above {threshold:.1%}", numbers)
    return Check(name, OK, threshold, rate, f"{name}: {words}, within {threshold:.1%}", numbers)


def _agreement(threshold: float, minimum: int, agreement: dict) -> Check:
    name = "agreement_min"
    pairs, mean = _count(agreement, "pairs"), (agreement or {}).get("mean")
    numbers = {"pairs": pairs, "mean": mean}
    if pairs < minimum or mean is None:
        return Check(
            name,
            INCONCLUSIVE,
            threshold,
            None,
            f"{name}: inconclusive, {pairs} compared pairs on the window, fewer than min_jobs {minimum}",
            numbers,
        )
    words = f"mean agreement {mean:.3f} over {pairs} shadow runs"
    if mean < threshold:
        return Check(name, BREACH, threshold, float(mean), f"{name}: {words}, below {threshold:g}", numbers)
    return Check(name, OK, threshold, float(mean), f"{name}: {words}, at least {threshold:g}", numbers)


def judge(
    guardrails: dict[str, Any], figures: dict[str, Any], *, baseline: dict[str, Any] | None = None, baseline_source: str = "window"
) -> Verdict:
    """The verdict of ``guardrails`` (a rollout's) on ``figures`` (jobs.stats.rollout_figures:
    ``figures["window"]`` holds ``baseline``, ``candidate`` and ``agreement``). Only the
    thresholds the rollout sets are judged.

    ``baseline``: the baseline figures to compare with when not the window's own (blue-green
    after the switch, when the baseline serves nobody), named by ``baseline_source``."""
    window = figures.get("window") or {}
    candidate = window.get("candidate") or {}
    base = baseline if baseline is not None else window.get("baseline") or {}
    minimum = int(guardrails.get("min_jobs", DEFAULT_GUARDRAILS["min_jobs"]))
    checks = []
    for name in THRESHOLDS:
        if guardrails.get(name) is None:
            continue
        threshold = float(guardrails[name])
        if name == "p95_latency_ratio_max":
            checks.append(_latency(threshold, minimum, candidate, base, baseline_source))
        elif name == "error_rate_max":
            checks.append(_errors(threshold, minimum, candidate, base))
        else:
            checks.append(_agreement(threshold, minimum, window.get("agreement") or {}))
    return Verdict(tuple(checks))


# --- The verdict of a rollout ----------------------------------------------------------------------

BASELINE_BEFORE_SWITCH = "baseline before the switch"


def verdict_baseline(rollout: Rollout, figures: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """The baseline figures the candidate is compared with, and where they come from: (None,
    "window") for the window's own baseline, the usual case.

    After a blue-green switch the baseline serves no one, so the window has no baseline latency
    to compare with: the candidate is judged against the baseline version's own figures on the
    window that ended at the switch (jobs.stats.rollout_evaluation_figures, "before_switch").
    Figures taken for another switch time (a race with the switch) are not used: an empty
    baseline, so the latency guardrail is inconclusive rather than judged on the wrong window."""
    if rollout.mode == RolloutMode.BLUE_GREEN and rollout.switched_at is not None:
        before = figures.get("before_switch") or {}
        same_switch = before.get("until") == rollout.switched_at.isoformat()
        return ((before.get("baseline") or {}) if same_switch else {}), BASELINE_BEFORE_SWITCH
    return None, "window"


def rollout_verdict(rollout: Rollout, figures: dict[str, Any]) -> Verdict:
    """The verdict of the rollout's guardrails on ``figures`` (jobs.stats.rollout_guardrail_figures):
    what the beat task acts on, and what every page that shows a verdict shows."""
    baseline, source = verdict_baseline(rollout, figures)
    return judge(rollout.guardrails, figures, baseline=baseline, baseline_source=source)


# --- Acting on the verdict ------------------------------------------------------------------------


def _stage_ready(rollout: Rollout, figures: dict[str, Any], now: dt.datetime) -> tuple[bool, str]:
    """Whether the current canary stage has met its minimums: min_seconds since it started and
    min_jobs candidate jobs finished since then (counted by jobs.stats, handed in as
    figures["stage"] for this very stage start)."""
    stage = rollout.current_stage
    elapsed = (now - rollout.stage_started_at).total_seconds() if rollout.stage_started_at else 0.0
    counted = figures.get("stage") or {}
    started = rollout.stage_started_at.isoformat() if rollout.stage_started_at else None
    # Counted for an earlier stage start (someone advanced or resumed meanwhile): not this stage's.
    jobs = _count(counted, "candidate_jobs") if counted.get("since") == started else 0
    words = f"{elapsed:.0f} s of {stage.min_seconds} s, {jobs} of {stage.min_jobs} candidate jobs"
    return elapsed >= stage.min_seconds and jobs >= stage.min_jobs, words


def rollout_evaluate(*, rollout_id, figures: dict[str, Any], warm: dict[str, int]) -> dict[str, Any]:
    """Judge the live rollout on ``figures`` and act: count a breach (an event with the figures),
    roll back after ``consecutive_breaches`` in a row, reset the count on a clean verdict; while
    running (not paused), advance a canary whose stage minimums are met with a clean verdict and
    switch a blue-green rollout once every live worker (``warm``, registry.services.workers_warm
    for the candidate) has the candidate loaded. Returns what it did (the beat task's result)."""
    now = timezone.now()
    with transaction.atomic():
        # of=("self",): the rollout row only, not the versions joined in (as rollouts.services).
        rollout = Rollout.objects.select_for_update(of=("self",)).select_related("baseline", "candidate").filter(pk=rollout_id).first()
        result: dict[str, Any] = {"rollout": str(rollout_id)}
        if rollout is None or not rollout.is_live:
            return {**result, "action": "none", "status": rollout.status if rollout else None}
        verdict = rollout_verdict(rollout, figures)
        result.update(verdict=verdict.outcome, status=rollout.status)
        recorded = {
            "verdict": verdict.as_dict(),
            "guardrails": rollout.guardrails,
            "window": figures.get("window"),
            "window_seconds": figures.get("window_seconds"),
            "until": figures.get("until"),
        }
        if "before_switch" in figures:
            recorded["before_switch"] = figures["before_switch"]

        if verdict.outcome == BREACH:
            return {**result, **_breach(rollout, verdict, recorded)}
        if verdict.outcome == OK and rollout.breaches:
            # A clean evaluation ends a streak; an inconclusive one neither extends nor ends it.
            rollout.breaches = 0
            rollout.save(update_fields=["breaches", "updated_at"])
        result["breaches"] = rollout.breaches
        if rollout.status != RolloutStatus.RUNNING:
            return {**result, "action": "none"}  # paused: guardrails watch, nothing moves on

        if rollout.mode == RolloutMode.CANARY:
            ready, words = _stage_ready(rollout, figures, now)
            # Only on evidence: a stage never advances on an inconclusive verdict or in the middle
            # of a streak of breaches (Argo Rollouts pauses on inconclusive likewise).
            if ready and verdict.outcome == OK and rollout.breaches == 0:
                last = rollout.stage_index + 1 >= len(rollout.stages)
                reason = f"stage {rollout.stage_index + 1} met its minimums ({words})" + (": promoting" if last else "")
                advanced = rollout_advance(
                    rollout_id=rollout.id, actor=STAGES_ACTOR, reason=reason, figures={**recorded, "stage": figures.get("stage")}
                )
                return {**result, "action": "promote" if last else "advance", "status": advanced.status, "weight": advanced.weight}
            return {**result, "action": "hold", "stage": words}

        if rollout.mode == RolloutMode.BLUE_GREEN and rollout.switched_at is None:
            live, loaded = int(warm.get("live", 0)), int(warm.get("loaded", 0))
            result["warm"] = {"live": live, "loaded": loaded}
            # No live worker at all is not "every worker is warm": nobody could serve the switch.
            if live > 0 and loaded == live:
                rollout_switch(
                    rollout_id=rollout.id,
                    actor=STAGES_ACTOR,
                    reason=f"all {live} live detection worker processes have {rollout.candidate_id} loaded",
                    figures={"warm": {"live": live, "loaded": loaded}},
                )
                return {**result, "action": "switch", "weight": 100}
            return {**result, "action": "hold"}
        return {**result, "action": "none"}


def _breach(rollout: Rollout, verdict: Verdict, recorded: dict[str, Any]) -> dict[str, Any]:
    """Count one breach (an event), and roll back when it completes a streak."""
    rollout.breaches += 1
    rollout.save(update_fields=["breaches", "updated_at"])
    needed = int(rollout.guardrail_setting("consecutive_breaches"))
    reason = f"{verdict.reason} (breach {rollout.breaches} of {needed} in a row)"
    RolloutEvent.objects.create(
        rollout=rollout,
        actor=GUARDRAILS_ACTOR,
        action="breach",
        from_status=rollout.status,
        to_status=rollout.status,
        from_weight=rollout.weight,
        to_weight=rollout.weight,
        reason=reason,
        figures=recorded,
    )
    guardrails = [check.guardrail for check in verdict.breaches]
    logger.warning("rollout %s: guardrail breach %d of %d: %s", rollout.id, rollout.breaches, needed, verdict.reason)
    if rollout.breaches < needed:
        return {"action": "breach", "breaches": rollout.breaches, "guardrails": guardrails}

    reason = f"automatic rollback after {rollout.breaches} breaches in a row: {verdict.reason}"
    rolled_back = rollout_rollback(rollout_id=rollout.id, actor=GUARDRAILS_ACTOR, reason=reason, figures=recorded)
    event = rolled_back.events.filter(action="rollback").order_by("-id").first()
    logger.error(
        "rollout %s rolled back automatically (%s -> %s, back to %s): %s",
        rollout.id,
        rollout.mode,
        rollout.candidate_id,
        rollout.baseline_id,
        verdict.reason,
    )
    if settings.ROLLOUT_ALERT_URL and event is not None:
        # In this transaction: the alert exists exactly when the rollback does. Its first try is
        # asked for after the commit; a broker that refuses the task cannot undo the committed
        # rollback (robust), and the senders' polls find the row regardless.
        alert = rollout_alert_create(event=event)
        callback_delivery_enqueue(delivery_id=alert.id, robust=True)
    return {
        "action": "rollback",
        "breaches": rollout.breaches,
        "guardrails": guardrails,
        "status": rolled_back.status,
        "event": event.id if event else None,
    }
