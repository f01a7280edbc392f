"""Rollouts: starting one, routing jobs by cohort, and every transition, each an event.

A rollout moves traffic from the baseline (the active version when it starts) to a candidate.
Routing is a pure function of (rollout id, cohort key), so every API process decides alike with
no shared state, a cohort keeps its side while the weight stays, and a cohort on the candidate at
25 % is still there at 50 % (both sides are a function of the cohort: no half-sticky drift).

Every state change locks the rollout row, checks its state, and appends a RolloutEvent with who
did it, why, and the figures behind it. The verdicts themselves (guardrails, stage advances) are
in rollouts/guardrails.py.
"""

import hashlib
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.db.models import Q
from django.utils import timezone

from core import statecache
from core.errors import Conflict, DomainError, NotFound
from registry.models import DetectorVersion
from registry.services import RegistryError, detector_version_activate, detector_version_active

from .models import DEFAULT_GUARDRAILS, LIVE_STATUSES, Rollout, RolloutEvent, RolloutMode, RolloutStatus, Variant

logger = logging.getLogger(__name__)

# Guardrails: name -> (lowest, highest) accepted. Thresholds are optional; the window settings
# have defaults (DEFAULT_GUARDRAILS).
GUARDRAIL_RANGES: dict[str, tuple[float, float]] = {
    # candidate p95 detection time / baseline p95 on the same window
    "p95_latency_ratio_max": (1.0, 100.0),
    # share of the candidate's jobs that failed, on the window
    "error_rate_max": (0.0, 1.0),
    # F1 of the candidate's faces against the baseline's on the same photos (IoU >= 0.5)
    "agreement_min": (0.0, 1.0),
    "window_seconds": (10, 7 * 24 * 3600),
    # no verdict until each side has this many jobs in the window (and agreement this many pairs)
    "min_jobs": (1, 1_000_000),
    # evaluations in a row that must breach before the rollback
    "consecutive_breaches": (1, 100),
}
INTEGER_GUARDRAILS = {"window_seconds", "min_jobs", "consecutive_breaches"}
STAGE_KEYS = {"weight", "min_seconds", "min_jobs"}
MAX_STAGE_SECONDS = 30 * 24 * 3600
# The usual canary plan when none is given (Argo Rollouts' setWeight steps, Flagger's stepWeight).
DEFAULT_CANARY_STAGES = [
    {"weight": 5, "min_seconds": 600, "min_jobs": 50},
    {"weight": 25, "min_seconds": 600, "min_jobs": 100},
    {"weight": 50, "min_seconds": 600, "min_jobs": 200},
    {"weight": 100, "min_seconds": 600, "min_jobs": 200},
]


@dataclass(frozen=True)
class Route:
    """Where a new job goes during a rollout."""

    rollout: Rollout
    variant: str  # Variant
    version: DetectorVersion
    cohort_key: str


# --- Reading --------------------------------------------------------------------------------------


def rollout_live() -> Rollout | None:
    """The running or paused rollout, if there is one."""
    return Rollout.objects.select_related("baseline", "candidate").filter(status__in=LIVE_STATUSES).first()


def rollout_list():
    """Every rollout, newest first (a queryset, for paging)."""
    return Rollout.objects.select_related("baseline", "candidate").order_by("-created_at", "-id")


def rollout_get(*, rollout_id) -> Rollout:
    try:
        pk = uuid.UUID(str(rollout_id))
    except ValueError:
        pk = None
    rollout = Rollout.objects.select_related("baseline", "candidate").filter(pk=pk).first() if pk else None
    if rollout is None:
        raise NotFound("not_found", "No rollout with that id.")
    return rollout


def rollout_retire_refusal(version_id: str) -> str | None:
    """Why ``version_id`` cannot be retired now: a live rollout routes jobs to it, as its
    candidate or its baseline (None: none does). Consulted by registry.services.detector_version_retire."""
    rollout = Rollout.objects.filter(status__in=LIVE_STATUSES).filter(Q(candidate_id=version_id) | Q(baseline_id=version_id)).first()
    if rollout is None:
        return None
    role = "candidate" if rollout.candidate_id == version_id else "baseline"
    return (
        f"{version_id} is the {role} of the live {rollout.mode} rollout {rollout.id} ({rollout.status}): "
        "roll it back, promote or end it first"
    )


# --- Routing --------------------------------------------------------------------------------------


def cohort_key(*, client_id: int, cohort: str = "") -> str:
    """The key a job is routed by: its cohort when the upload names one, else its API client."""
    return f"cohort:{cohort}" if cohort else f"client:{client_id}"


def assignment_bucket(rollout_id: uuid.UUID | str, key: str) -> float:
    """Where ``key`` falls in [0, 100) for this rollout: a hash, so the same key always falls in
    the same place, and different rollouts shuffle keys afresh."""
    digest = hashlib.sha256(f"{rollout_id}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100


def variant_for(rollout: Rollout, key: str) -> str:
    """The candidate for keys below the weight, the baseline for the rest."""
    return Variant.CANDIDATE if assignment_bucket(rollout.id, key) < rollout.weight else Variant.BASELINE


def _live_rollout_share_locked() -> Rollout | None:
    """The live rollout's row under a share lock until the transaction ends (PostgreSQL's FOR
    SHARE, which Django's select_for_update does not offer). Uploads share it with each other;
    every transition holds FOR UPDATE (_locked_live), so a rollback waits for the uploads routed
    under the state it ends, and an upload that reads after the rollback took its lock waits and
    then sees the rollout ended (the row is checked again once the lock is free)."""
    if connection.vendor != "postgresql":
        return Rollout.objects.filter(status__in=LIVE_STATUSES).first()
    table = connection.ops.quote_name(Rollout._meta.db_table)
    found = Rollout.objects.raw(f"SELECT * FROM {table} WHERE status IN (%s, %s) LIMIT 1 FOR SHARE", list(LIVE_STATUSES))
    return next(iter(found), None)


def rollout_route(*, client_id: int, cohort: str = "", locked: bool = False) -> Route | None:
    """The variant and version a new job gets from the live rollout (None: no rollout). Shadow
    mode always serves the baseline; the candidate runs on copies (see shadow_sampled).

    ``locked``: read under a share lock of the rollout row, held until the caller's transaction
    ends; in the transaction that records the job, so that the job and any transition of the
    rollout (a rollback above all) are ordered: no job is routed by a rollout state that a
    committed transition has already ended."""
    # Locked: the row alone, without joining both versions; the version the job is routed to is
    # read below, only when there is one.
    if locked:
        if not connection.in_atomic_block:
            raise RuntimeError("rollout_route(locked=True) must run in the transaction that records the job")
        rollout = _live_rollout_share_locked()
    else:
        # From this process's cache while no rollout has changed anywhere (core.statecache):
        # a start, a stage, a rollback route from the next request on. Both versions joined:
        # the join is paid once per change, not per upload.
        rollout = statecache.cached("live_rollout", "", rollout_live)
    if rollout is None:
        return None
    key = cohort_key(client_id=client_id, cohort=cohort)
    variant = Variant.BASELINE if rollout.mode == RolloutMode.SHADOW else variant_for(rollout, key)
    version = rollout.candidate if variant == Variant.CANDIDATE else rollout.baseline
    return Route(rollout=rollout, variant=variant, version=version, cohort_key=key)


def shadow_sampled(rollout: Rollout, job_id: uuid.UUID | str) -> bool:
    """Whether this job also runs on the other version (a pure function of the job, so a
    retried submission decides alike)."""
    return rollout.shadow_sample > 0 and assignment_bucket(rollout.id, f"shadow:{job_id}") < rollout.shadow_sample * 100


def shadow_variant(rollout: Rollout, served: str) -> str | None:
    """The side a shadow copy plays for a job served by ``served``: in shadow mode the candidate
    runs on the baseline's jobs; in canary and A/B the baseline runs on a sample of the
    candidate's, which is what agreement is measured on. None: no copy."""
    if rollout.mode == RolloutMode.SHADOW and served == Variant.BASELINE:
        return Variant.CANDIDATE
    if rollout.mode in (RolloutMode.CANARY, RolloutMode.AB) and served == Variant.CANDIDATE:
        return Variant.BASELINE
    return None


# --- Validation -----------------------------------------------------------------------------------


def _invalid(field: str, message: str, code: str = "invalid") -> DomainError:
    return DomainError(code, message, field=field)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def validate_stages(mode: str, stages: Any) -> list[dict[str, int]]:
    """The stages as stored: canary rises to 100 stage by stage; A/B holds one fixed split; shadow
    and blue-green take none."""
    if mode in (RolloutMode.SHADOW, RolloutMode.BLUE_GREEN):
        if stages:
            raise _invalid("stages", f"A {mode} rollout takes no stages.")
        return []
    if stages is None:
        stages = DEFAULT_CANARY_STAGES if mode == RolloutMode.CANARY else [{"weight": 50, "min_seconds": 0, "min_jobs": 0}]
    if not isinstance(stages, list) or not stages:
        raise _invalid("stages", "stages must be a non-empty list of {weight, min_seconds, min_jobs}.")
    if mode == RolloutMode.AB and len(stages) != 1:
        raise _invalid("stages", "An A/B rollout has one stage: the fixed split.")
    clean, previous = [], -1
    for position, stage in enumerate(stages):
        if not isinstance(stage, dict) or set(stage) - STAGE_KEYS or "weight" not in stage:
            raise _invalid("stages", f"Stage {position + 1} must be {{weight, min_seconds, min_jobs}} (weight required).")
        weight = stage["weight"]
        if not isinstance(weight, int) or isinstance(weight, bool) or not 0 < weight <= 100:
            raise _invalid("stages", f"Stage {position + 1}: weight must be a whole number from 1 to 100.")
        if weight <= previous:
            raise _invalid("stages", f"Stage {position + 1}: weights must rise from stage to stage.")
        min_seconds, min_jobs = stage.get("min_seconds", 0), stage.get("min_jobs", 0)
        if not isinstance(min_seconds, int) or isinstance(min_seconds, bool) or not 0 <= min_seconds <= MAX_STAGE_SECONDS:
            raise _invalid("stages", f"Stage {position + 1}: min_seconds must be a whole number from 0 to {MAX_STAGE_SECONDS}.")
        if not isinstance(min_jobs, int) or isinstance(min_jobs, bool) or not 0 <= min_jobs <= 1_000_000:
            raise _invalid("stages", f"Stage {position + 1}: min_jobs must be a whole number from 0 to 1000000.")
        clean.append({"weight": weight, "min_seconds": min_seconds, "min_jobs": min_jobs})
        previous = weight
    return clean


def validate_guardrails(guardrails: Any) -> dict[str, float]:
    if guardrails is None:
        guardrails = {}
    if not isinstance(guardrails, dict):
        raise _invalid("guardrails", "guardrails must be an object.")
    unknown = sorted(set(guardrails) - set(GUARDRAIL_RANGES))
    if unknown:
        raise _invalid(
            "guardrails", f"Unknown guardrail {', '.join(unknown)}; known: {', '.join(GUARDRAIL_RANGES)}.", code="unknown_guardrail"
        )
    clean = dict(DEFAULT_GUARDRAILS)
    for name, value in guardrails.items():
        low, high = GUARDRAIL_RANGES[name]
        if not _number(value) or not low <= value <= high or (name in INTEGER_GUARDRAILS and value != int(value)):
            kind = "a whole number" if name in INTEGER_GUARDRAILS else "a number"
            raise _invalid("guardrails", f"{name} must be {kind} from {low} to {high}.")
        clean[name] = int(value) if name in INTEGER_GUARDRAILS else float(value)
    return clean


def _candidate(candidate_id: Any) -> DetectorVersion:
    if not isinstance(candidate_id, str) or not candidate_id:
        raise _invalid("candidate", "candidate must be a detector version id (see /api/v1/models/).", code="required")
    id_length = DetectorVersion._meta.get_field("id").max_length
    # Looked up only when it could be an id: PostgreSQL refuses a NUL in a query parameter
    # (a server error, not an unknown version).
    # Locked (rollout_start is atomic): a retirement of it waits for this start, then sees the
    # live rollout and is refused (registry.services.detector_version_retire).
    version = (
        None
        if len(candidate_id) > id_length or "\x00" in candidate_id
        else DetectorVersion.objects.select_for_update().filter(id=candidate_id).first()
    )
    if version is None:
        raise _invalid("candidate", f"No model version {candidate_id!r}; see /api/v1/models/.", code="unknown_model_version")
    if version.retired_at:
        raise _invalid("candidate", f"{candidate_id} is retired.", code="retired_model_version")
    return version


def _f1(version: DetectorVersion) -> float | None:
    value = (version.evaluation or {}).get("f1")
    return float(value) if _number(value) else None


def _map(version: DetectorVersion) -> float | None:
    value = (version.evaluation or {}).get("map_50_95")
    return float(value) if _number(value) else None


def _map_gate(baseline: DetectorVersion, candidate: DetectorVersion, quality_drop_max: float) -> dict[str, Any]:
    """The quality gate on mAP@0.5:0.95, for two versions evaluated on the same COCO set."""
    base_sets = (baseline.evaluation or {}).get("labels") or {}
    cand_sets = (candidate.evaluation or {}).get("labels") or {}
    base_map, cand_map = _map(baseline), _map(candidate)
    figures = {
        "metric": "map_50_95",
        "baseline_map_50_95": base_map,
        "candidate_map_50_95": cand_map,
        "labels": base_sets.get("tag"),
        "quality_drop_max": quality_drop_max,
    }
    if base_sets.get("sha256") != cand_sets.get("sha256"):
        raise DomainError(
            "quality_gate",
            f"{baseline.id} and {candidate.id} were evaluated on different COCO label sets "
            f"({base_sets.get('tag')!r}, {cand_sets.get('tag')!r}): evaluate both on the same one.",
            field="quality_drop_max",
        )
    if cand_map < base_map - quality_drop_max:
        raise DomainError(
            "quality_gate",
            f"{candidate.id} scores mAP@0.5:0.95 {cand_map:.3f}, below {baseline.id}'s {base_map:.3f} minus {quality_drop_max}.",
            field="candidate",
        )
    return figures


def _quality_gate(baseline: DetectorVersion, candidate: DetectorVersion, quality_drop_max: float) -> dict[str, Any]:
    """Refuse a candidate whose stored quality (detector_evaluate) is worse than the baseline's by
    more than quality_drop_max: mAP@0.5:0.95 when both were evaluated on a COCO set (the same
    one), else F1. Returns the figures it judged on."""
    if _map(baseline) is not None and _map(candidate) is not None:
        return _map_gate(baseline, candidate, quality_drop_max)
    base_f1, cand_f1 = _f1(baseline), _f1(candidate)
    figures = {"baseline_f1": base_f1, "candidate_f1": cand_f1, "quality_drop_max": quality_drop_max}
    if base_f1 is None or cand_f1 is None:
        missing = ", ".join(v.id for v, f in ((baseline, base_f1), (candidate, cand_f1)) if f is None)
        raise DomainError("quality_gate", f"No stored evaluation for {missing}: run detector_evaluate first.", field="quality_drop_max")
    if cand_f1 < base_f1 - quality_drop_max:
        raise DomainError(
            "quality_gate",
            f"{candidate.id} scores F1 {cand_f1:.3f}, below {baseline.id}'s {base_f1:.3f} minus {quality_drop_max}.",
            field="candidate",
        )
    return figures


# --- Transitions ----------------------------------------------------------------------------------


def _event(
    rollout: Rollout, *, action: str, actor: str, before: tuple[str, int], reason: str = "", figures: dict | None = None
) -> RolloutEvent:
    return RolloutEvent.objects.create(
        rollout=rollout,
        actor=actor[:160],
        action=action,
        from_status=before[0],
        to_status=rollout.status,
        from_weight=before[1],
        to_weight=rollout.weight,
        reason=reason,
        figures=figures or {},
    )


@transaction.atomic
def rollout_start(
    *,
    candidate: Any,
    mode: Any,
    actor: str,
    stages: Any = None,
    guardrails: Any = None,
    shadow_sample: Any = None,
    quality_drop_max: Any = None,
) -> Rollout:
    """Start moving traffic from the active version to ``candidate``. Raises DomainError naming
    the field for bad input, Conflict ``rollout_in_progress`` while another rollout is live."""
    if mode not in RolloutMode.values:
        raise _invalid("mode", f"mode must be one of {', '.join(RolloutMode.values)}.")
    version = _candidate(candidate)
    baseline = detector_version_active()
    if baseline is None:
        raise Conflict("no_active_model", "No detector version is active to roll out from.")
    if version.id == baseline.id:
        raise _invalid("candidate", f"{version.id} is already the active version (the baseline).", code="candidate_is_baseline")
    clean_stages = validate_stages(mode, stages)
    clean_guardrails = validate_guardrails(guardrails)
    if shadow_sample is None:
        shadow_sample = 1.0 if mode == RolloutMode.SHADOW else 0.0
    if not _number(shadow_sample) or not 0 <= shadow_sample <= 1:
        raise _invalid("shadow_sample", "shadow_sample must be a number from 0 to 1 (the share of jobs copied).")
    if mode == RolloutMode.SHADOW and not shadow_sample:
        # With no copies the candidate never runs: a shadow rollout that measures nothing.
        raise _invalid("shadow_sample", "A shadow rollout needs shadow_sample above 0 (the share of jobs the candidate also runs).")
    if "agreement_min" in clean_guardrails and mode in (RolloutMode.CANARY, RolloutMode.AB) and not shadow_sample:
        raise _invalid("shadow_sample", "agreement_min needs shadow runs: set shadow_sample above 0.")
    if "agreement_min" in clean_guardrails and mode == RolloutMode.BLUE_GREEN:
        # Blue-green makes no shadow runs (shadow_variant), so the guardrail could never judge.
        raise _invalid("guardrails", "agreement_min needs shadow runs, which a blue_green rollout does not make.")
    figures = {}
    if quality_drop_max is not None:
        if not _number(quality_drop_max) or not 0 <= quality_drop_max <= 1:
            raise _invalid("quality_drop_max", "quality_drop_max must be a number from 0 to 1.")
        figures = _quality_gate(baseline, version, float(quality_drop_max))

    if Rollout.objects.filter(status__in=LIVE_STATUSES).exists():
        raise Conflict("rollout_in_progress", "Another rollout is running or paused: end it first.")
    now = timezone.now()
    try:
        with transaction.atomic():
            rollout = Rollout.objects.create(
                mode=mode,
                baseline=baseline,
                candidate=version,
                stages=clean_stages,
                stage_started_at=now,
                weight=clean_stages[0]["weight"] if clean_stages else 0,
                guardrails=clean_guardrails,
                shadow_sample=float(shadow_sample),
                quality_drop_max=None if quality_drop_max is None else float(quality_drop_max),
                created_by=actor[:128],
            )
    except IntegrityError as exc:  # another start raced in
        raise Conflict("rollout_in_progress", "Another rollout is running or paused: end it first.") from exc
    _event(rollout, action="start", actor=actor, before=("", 0), reason=f"{mode} of {version.id} from {baseline.id}", figures=figures)
    logger.warning("rollout %s started: %s %s -> %s", rollout.id, mode, baseline.id, version.id)
    return rollout


def _locked_live(rollout_id) -> Rollout:
    # of=("self",): lock the rollout row only, not the versions joined in (activating one locks
    # its row itself, and registry commands must not wait on a rollout's transaction).
    pk = rollout_get(rollout_id=rollout_id).pk
    rollout = Rollout.objects.select_for_update(of=("self",)).select_related("baseline", "candidate").get(pk=pk)
    if not rollout.is_live:
        raise Conflict("rollout_not_live", f"The rollout is {rollout.status}; nothing more can change it.")
    return rollout


@transaction.atomic
def rollout_promote(*, rollout_id, actor: str, reason: str = "", figures: dict | None = None) -> Rollout:
    """Make the candidate the active version and end the rollout."""
    rollout = _locked_live(rollout_id)
    before = (rollout.status, rollout.weight)
    try:
        detector_version_activate(version_id=rollout.candidate_id)
    except RegistryError as exc:  # the candidate was retired during the rollout
        raise Conflict(
            "candidate_not_activatable",
            f"{rollout.candidate_id} was retired during the rollout and cannot be made active; roll back instead.",
        ) from exc
    rollout.status, rollout.weight, rollout.ended_at = RolloutStatus.PROMOTED, 100, timezone.now()
    rollout.save()
    _event(rollout, action="promote", actor=actor, before=before, reason=reason or "promoted", figures=figures)
    logger.warning("rollout %s promoted: %s is active", rollout.id, rollout.candidate_id)
    return rollout


@transaction.atomic
def rollout_rollback(*, rollout_id, actor: str, reason: str = "", figures: dict | None = None) -> Rollout:
    """End the rollout with the baseline active: new jobs go to the baseline at once. Jobs
    already accepted keep the version they were routed to (never re-run, never dropped)."""
    rollout = _locked_live(rollout_id)
    before = (rollout.status, rollout.weight)
    figures = dict(figures or {})
    active = detector_version_active()
    if active is None or active.id != rollout.baseline_id:
        try:
            detector_version_activate(version_id=rollout.baseline_id)
        except RegistryError as exc:
            # A rollback must always stop the routing (it is the safe way out); if the baseline
            # was retired meanwhile, the active version stays as it is and the event says so.
            logger.error("rollout %s rolled back but %s cannot be made active again: %s", rollout.id, rollout.baseline_id, exc)
            figures["baseline_not_reactivated"] = str(exc)
    rollout.status, rollout.weight, rollout.ended_at = RolloutStatus.ROLLED_BACK, 0, timezone.now()
    rollout.save()
    _event(rollout, action="rollback", actor=actor, before=before, reason=reason or "rolled back", figures=figures)
    return rollout


@transaction.atomic
def rollout_end(*, rollout_id, actor: str, reason: str = "") -> Rollout:
    """End an A/B test or a shadow run with the baseline still active (no verdict implied)."""
    rollout = _locked_live(rollout_id)
    before = (rollout.status, rollout.weight)
    rollout.status, rollout.weight, rollout.ended_at = RolloutStatus.ENDED, 0, timezone.now()
    rollout.save()
    _event(rollout, action="end", actor=actor, before=before, reason=reason or "ended")
    return rollout


@transaction.atomic
def rollout_pause(*, rollout_id, actor: str, reason: str = "") -> Rollout:
    """Freeze the weight: routing goes on as it is, stages no longer advance by themselves, and
    guardrails still watch (a breach still rolls back)."""
    rollout = _locked_live(rollout_id)
    if rollout.status == RolloutStatus.PAUSED:
        raise Conflict("already_paused", "The rollout is already paused.")
    before = (rollout.status, rollout.weight)
    rollout.status = RolloutStatus.PAUSED
    rollout.save()
    _event(rollout, action="pause", actor=actor, before=before, reason=reason)
    return rollout


@transaction.atomic
def rollout_resume(*, rollout_id, actor: str, reason: str = "") -> Rollout:
    rollout = _locked_live(rollout_id)
    if rollout.status != RolloutStatus.PAUSED:
        raise Conflict("not_paused", "The rollout is not paused.")
    before = (rollout.status, rollout.weight)
    rollout.status = RolloutStatus.RUNNING
    # The stage's clock starts again: time spent paused does not count towards min_seconds.
    rollout.stage_started_at = timezone.now()
    rollout.save()
    _event(rollout, action="resume", actor=actor, before=before, reason=reason)
    return rollout


@transaction.atomic
def rollout_advance(*, rollout_id, actor: str, reason: str = "", figures: dict | None = None) -> Rollout:
    """Move a canary to its next stage (by hand, or by the guardrails' evaluation when the stage's
    minimums are met). Past the last stage the candidate is promoted."""
    rollout = _locked_live(rollout_id)
    if rollout.mode != RolloutMode.CANARY:
        raise Conflict("not_a_canary", f"A {rollout.mode} rollout has no stages to advance through.")
    if rollout.stage_index + 1 >= len(rollout.stages):
        return rollout_promote(rollout_id=rollout.id, actor=actor, reason=reason or "last stage completed", figures=figures)
    before = (rollout.status, rollout.weight)
    rollout.stage_index += 1
    rollout.weight = rollout.stages[rollout.stage_index]["weight"]
    rollout.stage_started_at = timezone.now()
    rollout.breaches = 0
    rollout.save()
    _event(rollout, action="advance", actor=actor, before=before, reason=reason or f"stage {rollout.stage_index + 1}", figures=figures)
    return rollout


@transaction.atomic
def rollout_switch(*, rollout_id, actor: str, reason: str = "", figures: dict | None = None) -> Rollout:
    """Blue-green: send everyone to the candidate at once (the guardrails' evaluation calls this
    when every live detection worker reports the candidate loaded). Rollback switches back."""
    rollout = _locked_live(rollout_id)
    if rollout.mode != RolloutMode.BLUE_GREEN:
        raise Conflict("not_blue_green", "Only a blue-green rollout switches.")
    if rollout.switched_at is not None:
        raise Conflict("already_switched", "Everyone is on the candidate already.")
    before = (rollout.status, rollout.weight)
    rollout.weight, rollout.switched_at = 100, timezone.now()
    rollout.save()
    _event(rollout, action="switch", actor=actor, before=before, reason=reason or "switched to the candidate", figures=figures)
    return rollout
