"""One read path for a rollout: its stage and window (Rollout properties), its figures
(jobs.stats.rollout_guardrail_figures) and its verdict (rollouts.guardrails.rollout_verdict) are
read once, so what the dashboard shows is what the beat task decides, in every mode."""

import datetime as dt
import html
import re
import time

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from jobs.models import ShadowRun, ShadowStatus
from rollouts import guardrails
from rollouts.models import DEFAULT_GUARDRAILS, Rollout, RolloutMode
from rollouts.services import rollout_start
from tests.rollouts import rows
from workers.tasks import evaluate_rollouts

pytestmark = pytest.mark.django_db

CANDIDATE = "mtcnn@1.1.0"  # shipped; the baseline is mtcnn@1.0.0 (active in tests)
HOLD = [{"weight": 50, "min_seconds": 3600, "min_jobs": 1_000_000}]  # a stage that never ends by itself
# Breaches are counted, never enough in a row to roll back: the rollout stays live for the page.
WATCH = {"min_jobs": 5, "consecutive_breaches": 100}


@pytest.fixture
def staff(client):
    user = get_user_model().objects.create_user(username=f"staff-{time.monotonic_ns()}", password="pw-not-used", is_staff=True)
    client.force_login(user)
    return client


def canary_failing():
    rollout = rollout_start(
        candidate=CANDIDATE,
        mode="canary",
        actor="test",
        stages=HOLD,
        guardrails={"error_rate_max": 0.1, "p95_latency_ratio_max": 1.5, **WATCH},
    )
    rows.jobs(rollout, "baseline", 10, ms=100)
    rows.jobs(rollout, "candidate", 10, failed=5, ms=400)
    return rollout


def ab_slow():
    rollout = rollout_start(
        candidate=CANDIDATE,
        mode="ab",
        actor="test",
        stages=[{"weight": 50}],
        guardrails={"error_rate_max": 0.5, "p95_latency_ratio_max": 2.0, **WATCH},
    )
    rows.jobs(rollout, "baseline", 10, ms=100)
    rows.jobs(rollout, "candidate", 10, failed=1, ms=300)
    return rollout


def shadow_disagreeing():
    """Clients get the baseline; the candidate's shadow runs are slower and disagree with it."""
    rollout = rollout_start(
        candidate=CANDIDATE,
        mode="shadow",
        actor="test",
        shadow_sample=1.0,
        guardrails={"agreement_min": 0.8, "p95_latency_ratio_max": 1.5, **WATCH},
    )
    served = rows.jobs(rollout, "baseline", 10, ms=100)
    ShadowRun.objects.bulk_create(
        ShadowRun(
            job=job,
            rollout=rollout,
            detector_version=rollout.candidate,
            variant="candidate",
            status=ShadowStatus.COMPLETED,
            faces=[],
            face_count=1,
            detection_ms=250,
            agreement=0.5,
            finished_at=timezone.now(),
        )
        for job in served
    )
    return rollout


def blue_green_before_switch():
    """Nobody is switched yet; candidate rows stand in for a pre-switch test of its figures."""
    rollout = rollout_start(
        candidate=CANDIDATE, mode="blue_green", actor="test", guardrails={"error_rate_max": 0.1, "p95_latency_ratio_max": 1.5, **WATCH}
    )
    rows.jobs(rollout, "baseline", 10, ms=100)
    rows.jobs(rollout, "candidate", 10, failed=3, ms=100)
    return rollout


def blue_green_after_switch():
    """Switched 30 s ago: the candidate is judged against the baseline version's jobs before the switch."""
    rollout = rollout_start(candidate=CANDIDATE, mode="blue_green", actor="test", guardrails={"p95_latency_ratio_max": 2.0, **WATCH})
    switched = timezone.now() - dt.timedelta(seconds=30)
    Rollout.objects.filter(pk=rollout.pk).update(switched_at=switched, weight=100)
    rows.jobs(None, "", 10, ms=100, finished=switched - dt.timedelta(seconds=10), version=rollout.baseline)
    rows.jobs(rollout, "candidate", 10, ms=400)
    return rollout


def dashboard_checks(staff) -> list[tuple[str, str]]:
    """(outcome, detail) of each guardrail check the dashboard's rollout panel shows."""
    page = staff.get("/dashboard/").content.decode()
    block = re.search(r'<ul class="checks">(.*?)</ul>', page, re.S)
    assert block is not None, "the dashboard shows no guardrail checks"
    found = re.findall(r'<span class="chip chip-(\w+)">\w+</span> (.*?)</li>', block.group(1), re.S)
    return [(outcome, html.unescape(detail).strip()) for outcome, detail in found]


@pytest.mark.parametrize(
    "make",
    [canary_failing, ab_slow, shadow_disagreeing, blue_green_before_switch, blue_green_after_switch],
    ids=["canary", "ab", "shadow", "blue_green", "blue_green_switched"],
)
def test_the_dashboard_shows_the_verdict_the_beat_task_reaches(staff, make):
    """In every mode, each check on the dashboard is the one the scheduled evaluation recorded, word for word."""
    rollout = make()
    result = evaluate_rollouts()
    assert result["verdict"] == "breach" and result["action"] == "breach"
    recorded = rollout.events.get(action="breach").figures["verdict"]["checks"]
    assert [(check["outcome"], check["detail"]) for check in recorded] == dashboard_checks(staff)


def test_a_switch_the_figures_were_not_taken_for_is_not_judged_on(db):
    """Blue-green after the switch: figures read for another switch time leave the latency inconclusive (same_switch)."""
    switched = timezone.now()
    rollout = Rollout(mode=RolloutMode.BLUE_GREEN, switched_at=switched, guardrails={"p95_latency_ratio_max": 1.5, "min_jobs": 5})
    slow = {"jobs": 10, "failed": 0, "p95_detection_ms": 400, "latency_samples": 10}
    fast = {"jobs": 10, "failed": 0, "p95_detection_ms": 100, "latency_samples": 10}
    figures = {
        "window": {"baseline": {}, "candidate": slow, "agreement": {}},
        "before_switch": {"until": switched.isoformat(), "baseline": fast},
    }
    assert guardrails.rollout_verdict(rollout, figures).outcome == guardrails.BREACH
    figures["before_switch"]["until"] = (switched - dt.timedelta(seconds=5)).isoformat()
    assert guardrails.rollout_verdict(rollout, figures).outcome == guardrails.INCONCLUSIVE


def test_stage_and_window_are_read_from_the_rollout():
    """current_stage clamps to the plan and counts from 1; the window falls back to the default."""
    rollout = Rollout(mode=RolloutMode.CANARY, stages=[{"weight": 5, "min_seconds": 60, "min_jobs": 3}, {"weight": 100}], stage_index=1)
    stage = rollout.current_stage
    assert (stage.index, stage.number, stage.of, stage.weight, stage.min_seconds, stage.min_jobs) == (1, 2, 2, 100, 0, 0)
    assert stage.label == "2 of 2"
    rollout.stage_index = 7
    assert rollout.current_stage.index == 1
    assert Rollout(mode=RolloutMode.SHADOW, stages=[]).current_stage is None
    assert Rollout(guardrails={}).window_seconds == DEFAULT_GUARDRAILS["window_seconds"]
    assert Rollout(guardrails={"window_seconds": 90}).window_seconds == 90


def test_the_api_and_the_command_show_the_same_stage(operator, canary):
    """The API's stage object and the shell's stage line come from the one property."""
    from io import StringIO

    from django.core.management import call_command

    stage = operator.get(f"/api/v1/rollouts/{canary['id']}/").json()["stage"]
    assert {k: stage[k] for k in ("index", "number", "of", "weight")} == {"index": 0, "number": 1, "of": 2, "weight": 5}
    out = StringIO()
    call_command("rollout", "status", stdout=out)
    assert "stage 1 of 2: weight 5 %" in out.getvalue()
