"""Guardrail verdicts: judge on hand-made figures, and the beat's evaluation on the real database
(real job and shadow-run rows, the real figures queries) rolling back, advancing and switching;
the latency guardrail end to end with a truly slower candidate run by the real worker."""

import datetime as dt
import logging
from pathlib import Path

import pytest
from django.utils import timezone

from jobs.models import Image
from registry.models import WorkerHeartbeat
from registry.services import detector_version_active, detector_version_register, worker_heartbeat
from rollouts import guardrails
from rollouts.guardrails import BREACH, INCONCLUSIVE, OK, judge
from rollouts.models import Rollout, RolloutStatus
from rollouts.services import cohort_key, rollout_pause, rollout_start, variant_for
from tests.conftest import photo_bytes, upload, wait_terminal
from tests.rollouts import rows
from workers.tasks import evaluate_rollouts

ROOT = Path(__file__).resolve().parents[2]
SLOW_VERSION = ROOT / "tests" / "data" / "versions" / "mtcnn-slow@1.0.0.json"
CANDIDATE = "mtcnn@1.1.0"  # shipped; the baseline is mtcnn@1.0.0 (active in tests)
HOLD = [{"weight": 50, "min_seconds": 3600, "min_jobs": 1_000_000}]  # a stage that never ends by itself


# --- judge, on hand-made figures -------------------------------------------------------------------


def side(jobs: int = 100, failed: int = 0, p95: float | None = 100.0, samples: int | None = None) -> dict:
    return {"jobs": jobs, "failed": failed, "p95_detection_ms": p95, "latency_samples": jobs - failed if samples is None else samples}


def figures(baseline: dict | None = None, candidate: dict | None = None, pairs: int = 100, mean: float | None = 0.95) -> dict:
    return {"window": {"baseline": baseline or side(), "candidate": candidate or side(), "agreement": {"pairs": pairs, "mean": mean}}}


def test_judge_latency_ratio_breach_names_figures_and_threshold():
    """A candidate p95 3x the baseline's breaches a 2.0 ratio, with both p95s and the threshold."""
    verdict = judge({"p95_latency_ratio_max": 2.0, "min_jobs": 20}, figures(side(p95=100), side(p95=300)))
    assert verdict.outcome == BREACH
    (check,) = verdict.breaches
    assert (check.guardrail, check.value, check.threshold) == ("p95_latency_ratio_max", 3.0, 2.0)
    assert check.figures["candidate_p95_ms"] == 300 and check.figures["baseline_p95_ms"] == 100
    assert "300 ms" in verdict.reason and "100 ms" in verdict.reason and "above 2" in verdict.reason


def test_judge_latency_within_ratio_is_ok():
    """A candidate p95 1.5x the baseline's is within a 2.0 ratio."""
    verdict = judge({"p95_latency_ratio_max": 2.0, "min_jobs": 20}, figures(side(p95=100), side(p95=150)))
    assert verdict.outcome == OK and verdict.checks[0].value == 1.5


def test_judge_error_rate_breach():
    """5 failed of 50 candidate jobs (10 %) breaches error_rate_max 0.05."""
    verdict = judge({"error_rate_max": 0.05, "min_jobs": 20}, figures(candidate=side(jobs=50, failed=5)))
    assert verdict.outcome == BREACH
    (check,) = verdict.breaches
    assert (check.guardrail, check.value, check.threshold) == ("error_rate_max", 0.1, 0.05)
    assert "5 of 50" in check.detail


def test_judge_error_rate_at_threshold_is_ok():
    """Exactly at the threshold is not a breach (the maximum is allowed)."""
    assert judge({"error_rate_max": 0.1, "min_jobs": 20}, figures(candidate=side(jobs=50, failed=5))).outcome == OK


def test_judge_agreement_breach():
    """Mean agreement 0.6 over 30 pairs breaches agreement_min 0.8."""
    verdict = judge({"agreement_min": 0.8, "min_jobs": 20}, figures(pairs=30, mean=0.6))
    assert verdict.outcome == BREACH
    (check,) = verdict.breaches
    assert (check.guardrail, check.value, check.threshold) == ("agreement_min", 0.6, 0.8)


@pytest.mark.parametrize(
    "guardrail, data",
    [
        ("p95_latency_ratio_max", figures(side(p95=100), side(jobs=19, p95=900))),  # too few candidate jobs
        ("p95_latency_ratio_max", figures(side(jobs=5, p95=100), side(p95=900))),  # too few baseline jobs
        ("p95_latency_ratio_max", figures(side(p95=100), side(jobs=40, p95=900, samples=10))),  # too few warm samples
        ("error_rate_max", figures(side(), side(jobs=19, failed=19))),
        ("error_rate_max", figures(side(jobs=3), side(jobs=40, failed=40))),
        ("agreement_min", figures(pairs=19, mean=0.0)),
    ],
)
def test_judge_is_inconclusive_below_min_jobs(guardrail, data):
    """Below min_jobs (on either side, or compared pairs) even dreadful figures are no verdict."""
    thresholds = {"p95_latency_ratio_max": 1.5, "error_rate_max": 0.01, "agreement_min": 0.99}
    verdict = judge({guardrail: thresholds[guardrail], "min_jobs": 20}, data)
    assert verdict.outcome == INCONCLUSIVE and not verdict.breaches
    assert "fewer than min_jobs 20" in verdict.reason


def test_judge_breach_outweighs_an_inconclusive_guardrail():
    """One guardrail breached and another without enough data is a breach."""
    verdict = judge({"error_rate_max": 0.05, "agreement_min": 0.9, "min_jobs": 20}, figures(candidate=side(failed=50), pairs=2))
    assert verdict.outcome == BREACH
    assert {c.guardrail: c.outcome for c in verdict.checks} == {"error_rate_max": BREACH, "agreement_min": INCONCLUSIVE}


def test_judge_without_thresholds_has_nothing_to_breach():
    """Only the thresholds a rollout sets are judged: none set is a clean verdict."""
    verdict = judge({"window_seconds": 600, "min_jobs": 20, "consecutive_breaches": 2}, figures(candidate=side(failed=100)))
    assert verdict.outcome == OK and verdict.checks == ()


def test_judge_compares_with_a_given_baseline():
    """Blue-green after the switch: latency is compared with the baseline figures handed in."""
    data = figures(side(jobs=0, p95=None), side(p95=300))
    assert judge({"p95_latency_ratio_max": 2.0, "min_jobs": 20}, data).outcome == INCONCLUSIVE
    verdict = judge(
        {"p95_latency_ratio_max": 2.0, "min_jobs": 20}, data, baseline=side(p95=100), baseline_source="baseline before the switch"
    )
    assert verdict.outcome == BREACH and "before the switch" in verdict.reason


# --- The evaluation on the real database -------------------------------------------------------


def start_canary(*, guardrails: dict | None = None, stages=HOLD, **kwargs) -> Rollout:
    return rollout_start(candidate=CANDIDATE, mode="canary", actor="operator:test", stages=stages, guardrails=guardrails, **kwargs)


def refresh(rollout: Rollout) -> Rollout:
    rollout.refresh_from_db()
    return rollout


def assert_rolled_back(rollout: Rollout, guardrail: str, caplog) -> None:
    rollout = refresh(rollout)
    assert rollout.status == RolloutStatus.ROLLED_BACK and rollout.weight == 0
    assert detector_version_active().id == rollout.baseline_id
    event = rollout.events.get(action="rollback")
    assert event.actor == "system:guardrails"
    assert guardrail in event.reason
    assert guardrail in {check["guardrail"] for check in event.figures["verdict"]["checks"] if check["outcome"] == "breach"}
    assert event.figures["window"]["candidate"]["jobs"] > 0
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and r.name == "rollouts.guardrails"]
    assert len(errors) == 1 and str(rollout.id) in errors[0].getMessage() and guardrail in errors[0].getMessage()


@pytest.mark.django_db
def test_error_rate_breaches_count_then_roll_back(caplog):
    """Failing candidate jobs: one breach (an event), then at consecutive_breaches 2 an automatic rollback."""
    rollout = start_canary(guardrails={"error_rate_max": 0.1, "min_jobs": 10, "consecutive_breaches": 2})
    rows.jobs(rollout, "baseline", 20)
    rows.jobs(rollout, "candidate", 20, failed=6)

    first = evaluate_rollouts()
    assert first["action"] == "breach" and first["guardrails"] == ["error_rate_max"]
    assert refresh(rollout).status == RolloutStatus.RUNNING and rollout.breaches == 1
    breach = rollout.events.get(action="breach")
    assert breach.actor == "system:guardrails" and "6 of 20" in breach.reason
    assert breach.figures["window"]["candidate"]["failed"] == 6

    with caplog.at_level(logging.WARNING):
        second = evaluate_rollouts()
    assert second["action"] == "rollback"
    assert_rolled_back(rollout, "error_rate_max", caplog)
    assert rollout.events.filter(action="breach").count() == 2
    # Over: the next beat has no live rollout to judge.
    assert evaluate_rollouts() is None


@pytest.mark.django_db
def test_agreement_below_minimum_rolls_back(caplog):
    """Shadow runs that disagree with the candidate roll it back on agreement_min."""
    rollout = start_canary(guardrails={"agreement_min": 0.8, "min_jobs": 5, "consecutive_breaches": 1}, shadow_sample=1.0)
    rows.jobs(rollout, "baseline", 5)
    served = rows.jobs(rollout, "candidate", 6)
    rows.shadow_runs(rollout, served, agreement=0.5)
    with caplog.at_level(logging.WARNING):
        result = evaluate_rollouts()
    assert result["action"] == "rollback" and result["guardrails"] == ["agreement_min"]
    assert_rolled_back(rollout, "agreement_min", caplog)
    event = rollout.events.get(action="rollback")
    assert event.figures["window"]["agreement"] == {"pairs": 6, "mean": 0.5}


@pytest.mark.django_db
def test_clean_figures_keep_the_rollout_and_reset_the_streak():
    """Healthy candidate figures: no rollback; a clean evaluation ends a streak of breaches."""
    rollout = start_canary(
        guardrails={"error_rate_max": 0.1, "p95_latency_ratio_max": 2.0, "agreement_min": 0.8, "min_jobs": 5}, shadow_sample=0.5
    )
    Rollout.objects.filter(pk=rollout.pk).update(breaches=1)
    rows.jobs(rollout, "baseline", 10, ms=100)
    served = rows.jobs(rollout, "candidate", 10, ms=120)
    rows.shadow_runs(rollout, served, agreement=0.95)
    result = evaluate_rollouts()
    assert (result["verdict"], result["action"], result["breaches"]) == ("ok", "hold", 0)
    assert refresh(rollout).status == RolloutStatus.RUNNING and rollout.breaches == 0
    assert not rollout.events.filter(action__in=("breach", "rollback")).exists()


@pytest.mark.django_db
def test_only_consecutive_breaches_roll_back():
    """Breach, inconclusive (counter kept), clean (counter reset), breach: never two in a row, no rollback."""
    rollout = start_canary(guardrails={"error_rate_max": 0.1, "min_jobs": 10, "consecutive_breaches": 2})
    bad, few, good = figures(candidate=side(jobs=20, failed=10)), figures(candidate=side(jobs=3, failed=3)), figures()

    def run(data):
        return guardrails.rollout_evaluate(rollout_id=rollout.id, figures=data, warm={})

    assert run(bad)["action"] == "breach" and refresh(rollout).breaches == 1
    assert run(few)["verdict"] == "inconclusive" and refresh(rollout).breaches == 1
    assert run(good)["verdict"] == "ok" and refresh(rollout).breaches == 0
    assert run(bad)["action"] == "breach" and refresh(rollout).breaches == 1
    assert refresh(rollout).status == RolloutStatus.RUNNING
    # ... and a second in a row does it.
    assert run(bad)["action"] == "rollback" and refresh(rollout).status == RolloutStatus.ROLLED_BACK


@pytest.mark.django_db
def test_too_few_jobs_is_no_verdict():
    """A candidate failing every job, but below min_jobs: no breach is counted."""
    rollout = start_canary(guardrails={"error_rate_max": 0.01, "min_jobs": 20, "consecutive_breaches": 1})
    rows.jobs(rollout, "baseline", 50)
    rows.jobs(rollout, "candidate", 19, failed=19)
    result = evaluate_rollouts()
    assert result["verdict"] == "inconclusive"
    assert refresh(rollout).status == RolloutStatus.RUNNING and rollout.breaches == 0


@pytest.mark.django_db
def test_jobs_outside_the_window_are_not_judged():
    """Failures older than window_seconds do not count against the candidate."""
    rollout = start_canary(guardrails={"error_rate_max": 0.01, "min_jobs": 5, "consecutive_breaches": 1, "window_seconds": 60})
    long_ago = timezone.now() - dt.timedelta(minutes=5)
    rows.jobs(rollout, "baseline", 10, finished=long_ago)
    rows.jobs(rollout, "candidate", 10, failed=10, finished=long_ago)
    assert evaluate_rollouts()["verdict"] == "inconclusive"
    assert refresh(rollout).status == RolloutStatus.RUNNING


@pytest.mark.django_db
def test_a_paused_rollout_is_still_rolled_back(caplog):
    """Pausing freezes the stages, not the guardrails: a breach still rolls back."""
    rollout = start_canary(guardrails={"error_rate_max": 0.1, "min_jobs": 5, "consecutive_breaches": 1})
    rollout_pause(rollout_id=rollout.id, actor="operator:test")
    rows.jobs(rollout, "baseline", 10)
    rows.jobs(rollout, "candidate", 10, failed=5)
    with caplog.at_level(logging.WARNING):
        assert evaluate_rollouts()["action"] == "rollback"
    assert_rolled_back(rollout, "error_rate_max", caplog)


# --- Stages and the blue-green switch ---------------------------------------------------------------

TWO_STAGES = [{"weight": 10, "min_seconds": 0, "min_jobs": 3}, {"weight": 40, "min_seconds": 0, "min_jobs": 3}]


@pytest.mark.django_db
def test_stages_advance_when_minimums_are_met_then_promote():
    """Stage 1 holds below its min_jobs, advances at it; stage 2 counts only its own jobs, then promotes."""
    rollout = start_canary(stages=TWO_STAGES)
    rows.jobs(rollout, "baseline", 10)
    rows.jobs(rollout, "candidate", 2)
    assert evaluate_rollouts()["action"] == "hold" and refresh(rollout).weight == 10

    rows.jobs(rollout, "candidate", 1)
    result = evaluate_rollouts()
    assert (result["action"], result["weight"]) == ("advance", 40)
    assert (refresh(rollout).stage_index, rollout.weight, rollout.status) == (1, 40, RolloutStatus.RUNNING)
    advance = rollout.events.get(action="advance")
    assert advance.actor == "system:stages" and "3 of 3 candidate jobs" in advance.reason
    assert advance.figures["stage"]["candidate_jobs"] == 3

    # The jobs of stage 1 finished before stage 2 started: they do not count for it.
    assert evaluate_rollouts()["action"] == "hold"
    rows.jobs(rollout, "candidate", 3)
    assert evaluate_rollouts()["action"] == "promote"
    assert refresh(rollout).status == RolloutStatus.PROMOTED and rollout.weight == 100
    assert detector_version_active().id == CANDIDATE
    assert rollout.events.get(action="promote").actor == "system:stages"


@pytest.mark.django_db
def test_stage_waits_for_min_seconds():
    """Enough jobs but not enough time in the stage: no advance."""
    rollout = start_canary(stages=[{"weight": 10, "min_seconds": 3600, "min_jobs": 1}, {"weight": 50}])
    rows.jobs(rollout, "candidate", 5)
    assert evaluate_rollouts()["action"] == "hold"
    assert refresh(rollout).weight == 10 and not rollout.events.filter(action="advance").exists()


@pytest.mark.django_db
def test_paused_rollout_does_not_advance():
    """A paused canary whose stage minimums are met stays where it is."""
    rollout = start_canary(stages=TWO_STAGES)
    rollout_pause(rollout_id=rollout.id, actor="operator:test")
    rows.jobs(rollout, "candidate", 10)
    assert evaluate_rollouts()["action"] == "none"
    assert (refresh(rollout).status, rollout.weight, rollout.stage_index) == (RolloutStatus.PAUSED, 10, 0)


@pytest.mark.django_db
def test_stage_does_not_advance_on_an_inconclusive_verdict():
    """Minimums met, but a guardrail lacks the data to judge: the stage holds (no advance on no evidence)."""
    rollout = start_canary(stages=TWO_STAGES, guardrails={"error_rate_max": 0.1, "min_jobs": 50})
    rows.jobs(rollout, "baseline", 10)
    rows.jobs(rollout, "candidate", 10)
    result = evaluate_rollouts()
    assert (result["verdict"], result["action"]) == ("inconclusive", "hold")
    assert refresh(rollout).weight == 10


def start_blue_green(**kwargs) -> Rollout:
    return rollout_start(candidate=CANDIDATE, mode="blue_green", actor="operator:test", **kwargs)


@pytest.mark.django_db
def test_blue_green_switches_only_when_every_live_worker_has_the_candidate():
    """No workers, or one without the candidate: no switch; all live ones warm (stale ones aside): switch."""
    rollout = start_blue_green()
    assert evaluate_rollouts()["action"] == "hold"  # no live worker at all

    worker_heartbeat(worker="host:1", versions=["mtcnn@1.0.0", CANDIDATE])
    worker_heartbeat(worker="host:2", versions=["mtcnn@1.0.0"])
    result = evaluate_rollouts()
    assert result["action"] == "hold" and result["warm"] == {"live": 2, "loaded": 1}
    assert refresh(rollout).switched_at is None and rollout.weight == 0

    # A worker silent for longer than the stale limit is gone, not cold.
    WorkerHeartbeat.objects.filter(worker="host:2").update(seen_at=timezone.now() - dt.timedelta(minutes=5))
    worker_heartbeat(worker="host:3", versions=[CANDIDATE])
    result = evaluate_rollouts()
    assert result["action"] == "switch" and result["warm"] == {"live": 2, "loaded": 2}
    assert refresh(rollout).switched_at is not None and rollout.weight == 100
    switch = rollout.events.get(action="switch")
    assert switch.actor == "system:stages" and switch.figures["warm"] == {"live": 2, "loaded": 2}
    # Once only.
    assert evaluate_rollouts()["action"] == "none"
    assert rollout.events.filter(action="switch").count() == 1


@pytest.mark.django_db
def test_paused_blue_green_does_not_switch():
    """Every worker warm, but the rollout is paused: no switch."""
    rollout = start_blue_green()
    rollout_pause(rollout_id=rollout.id, actor="operator:test")
    worker_heartbeat(worker="host:1", versions=[CANDIDATE])
    assert evaluate_rollouts()["action"] == "none"
    assert refresh(rollout).switched_at is None


@pytest.mark.django_db
def test_blue_green_after_switch_is_judged_against_the_baseline_before_it(caplog):
    """After the switch the baseline serves no one: latency is compared with its jobs before the switch."""
    rollout = start_blue_green(guardrails={"p95_latency_ratio_max": 2.0, "min_jobs": 5, "consecutive_breaches": 1})
    switched = timezone.now() - dt.timedelta(seconds=30)
    Rollout.objects.filter(pk=rollout.pk).update(switched_at=switched, weight=100)
    # The baseline version's jobs in the window before the switch (before the rollout, too).
    rows.jobs(None, "", 10, ms=100, finished=switched - dt.timedelta(seconds=10), version=rollout.baseline)
    rows.jobs(rollout, "candidate", 10, ms=400)
    with caplog.at_level(logging.WARNING):
        result = evaluate_rollouts()
    assert result["action"] == "rollback"
    assert_rolled_back(rollout, "p95_latency_ratio_max", caplog)
    event = rollout.events.get(action="rollback")
    assert "before the switch" in event.reason
    assert event.figures["before_switch"]["baseline"]["p95_detection_ms"] == 100


# --- Latency, end to end: a truly slower candidate on the real worker ----------------------------------


def cohorts(rollout: Rollout, variant: str, count: int) -> list[str]:
    """Cohort names the rollout routes to ``variant``."""
    found, n = [], 0
    while len(found) < count:
        name = f"camera-{n}"
        if variant_for(rollout, cohort_key(client_id=0, cohort=name)) == variant:
            found.append(name)
        n += 1
    return found


@pytest.mark.django_db(transaction=True)
def test_slower_candidate_is_rolled_back_on_latency(api_client, worker, s3, caplog):
    """mtcnn with min_face_size 4 (many times slower) at 50 % is rolled back by the beat for p95_latency_ratio_max."""
    version, _ = detector_version_register(path=SLOW_VERSION)
    rollout = rollout_start(
        candidate=version.id,
        mode="canary",
        actor="operator:test",
        stages=HOLD,
        guardrails={"p95_latency_ratio_max": 2.0, "min_jobs": 3, "consecutive_breaches": 1},
    )
    photo = photo_bytes("chelsea_cat.png")
    submitted = {}
    # One spare a side: a job that had to load its detector (cold) is left out of the latency figures.
    for variant in ("baseline", "candidate"):
        for name in cohorts(rollout, variant, 4):
            response = upload(api_client, photo, name="chelsea_cat.png", request_id=f"latency-{name}", cohort=name)
            assert response.status_code == 202, response.content
            submitted[response.json()["id"]] = variant
    for job_id, variant in submitted.items():
        job = wait_terminal(job_id)
        assert job.status == "completed", (job.error_code, job.error_message)
        assert job.rollout_id == rollout.id and job.variant == variant
        assert job.detector_version_id == (version.id if variant == "candidate" else rollout.baseline_id)

    with caplog.at_level(logging.WARNING):
        result = evaluate_rollouts()
    assert result["action"] == "rollback" and result["guardrails"] == ["p95_latency_ratio_max"], result
    assert_rolled_back(rollout, "p95_latency_ratio_max", caplog)
    check = next(c for c in rollout.events.get(action="rollback").figures["verdict"]["checks"] if c["guardrail"] == "p95_latency_ratio_max")
    assert check["value"] > 2.0 and check["candidate_p95_ms"] > check["baseline_p95_ms"]
    # Jobs already accepted keep the version they were routed to; new ones go to the baseline.
    assert Image.objects.filter(rollout=rollout, variant="candidate", detector_version=version).count() == 4
