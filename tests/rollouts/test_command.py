"""`manage.py rollout` and `create_api_key --operator`: the same rollouts from the shell."""

import json

import pytest
from django.core.management import CommandError, call_command

from clients.models import ApiClient
from registry.models import DetectorVersion
from registry.services import detector_version_active, worker_heartbeat
from rollouts.models import Rollout, RolloutEvent

from .conftest import BASELINE, CANDIDATE, finished_jobs

pytestmark = [pytest.mark.django_db]


def rollout(*args) -> str:
    """Run `manage.py rollout ARGS` and return what it printed."""
    from io import StringIO

    out = StringIO()
    call_command("rollout", *args, stdout=out)
    return out.getvalue()


def test_create_api_key_operator_makes_an_operator_and_prints_the_key_last(capsys, anonymous_client):
    """--operator marks the client; the key alone on the last line opens the rollouts routes."""
    call_command("create_api_key", "release-team", "--operator")
    key = capsys.readouterr().out.strip().splitlines()[-1]
    assert key.startswith("fda_") and " " not in key
    assert ApiClient.objects.get(name="release-team").is_operator
    anonymous_client.credentials(HTTP_X_API_KEY=key)
    assert anonymous_client.get("/api/v1/rollouts/").status_code == 200


def test_a_new_key_without_the_flag_neither_makes_nor_demotes_an_operator(capsys):
    """Without --operator a new client is a plain client, and an operator stays one."""
    call_command("create_api_key", "acme")
    assert not ApiClient.objects.get(name="acme").is_operator
    call_command("create_api_key", "acme", "--operator")
    call_command("create_api_key", "acme")
    assert ApiClient.objects.get(name="acme").is_operator


def test_start_prints_the_rollout_and_its_id_last():
    """start: the plan and where it stands, then the id alone on the last line; the actor is shell."""
    stages = json.dumps([{"weight": 10}, {"weight": 100}])
    out = rollout("start", "--candidate", CANDIDATE, "--mode", "canary", "--stages", stages, "--guardrails", '{"error_rate_max": 0.05}')
    rollout_id = out.strip().splitlines()[-1]
    row = Rollout.objects.get(id=rollout_id)
    assert (row.mode, row.weight, row.created_by, row.stages[1]["weight"]) == ("canary", 10, "shell", 100)
    assert row.guardrails["error_rate_max"] == 0.05
    assert f"canary of {CANDIDATE} from {BASELINE}" in out and "weight 10 %" in out and "stage 1 of 2" in out
    assert RolloutEvent.objects.get(rollout=row).actor == "shell"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--candidate", "nope@1.0.0", "--mode", "canary"], "No model version"),
        (["--candidate", BASELINE, "--mode", "canary"], "already the active version"),
        (["--candidate", CANDIDATE, "--mode", "linear"], "mode must be one of"),
        (["--candidate", CANDIDATE, "--mode", "canary", "--stages", '[{"weight": 50}, {"weight": 20}]'], "must rise"),
        (["--candidate", CANDIDATE, "--mode", "canary", "--stages", "[{weight: 5}]"], "--stages is not valid JSON"),
        (["--candidate", CANDIDATE, "--mode", "canary", "--guardrails", '{"window_seconds": -5}'], "window_seconds must be"),
        (["--candidate", CANDIDATE, "--mode", "canary", "--guardrails", '{"speed": 1}'], "Unknown guardrail speed"),
        (["--candidate", CANDIDATE, "--mode", "canary", "--shadow-sample", "2"], "shadow_sample must be"),
        (["--candidate", CANDIDATE, "--mode", "canary", "--quality-drop-max", "0.1"], "No stored evaluation"),
    ],
)
def test_bad_start_is_a_command_error_with_the_message(args, message):
    """Each refusal of the service is a CommandError carrying its message; nothing starts."""
    with pytest.raises(CommandError, match=message):
        rollout("start", *args)
    assert not Rollout.objects.exists()


def test_a_second_start_is_refused():
    """One rollout at a time from the shell too."""
    rollout("start", "--candidate", CANDIDATE, "--mode", "ab")
    with pytest.raises(CommandError, match="Another rollout is running or paused"):
        rollout("start", "--candidate", CANDIDATE, "--mode", "shadow")


def test_status_shows_weight_stage_figures_workers_and_events():
    """status (the live one by default): status, weight, stage, both variants' figures, workers warm, events."""
    rollout("start", "--candidate", CANDIDATE, "--mode", "canary", "--stages", '[{"weight": 5}, {"weight": 50}]')
    rollout("pause", "--reason", "checking the dashboards")
    worker_heartbeat(worker="host:1", versions=[BASELINE, CANDIDATE])
    worker_heartbeat(worker="host:2", versions=[BASELINE])
    out = rollout("status")
    assert "status paused, weight 5 %" in out and "stage 1 of 2" in out
    assert "window of 600 s" in out
    lines = out.splitlines()
    assert any(line.split()[:2] == ["baseline", "0"] for line in lines) and any(line.split()[:2] == ["candidate", "0"] for line in lines)
    assert f"workers warm: 1 of 2 live detection workers have {CANDIDATE} loaded" in out
    assert "start by shell" in out and "pause by shell (running -> paused, 5 -> 5 %): checking the dashboards" in out
    rollout_id = str(Rollout.objects.get().id)
    assert rollout("status", rollout_id) == out


def test_status_shows_each_variants_figures_on_the_window():
    """Seeded finished jobs: each variant's jobs, failures, error rate and p95 appear on its own row."""
    rollout_id = rollout("start", "--candidate", CANDIDATE, "--mode", "canary").strip().splitlines()[-1]
    finished_jobs(rollout_id, "baseline", count=4, detection_ms=100)
    finished_jobs(rollout_id, "candidate", count=5, detection_ms=300, failed=1)
    rows = {
        line.split()[0]: line.split()[1:] for line in rollout("status").splitlines() if line.split()[:1] in (["baseline"], ["candidate"])
    }
    assert rows["baseline"] == ["4", "0", "0.0", "100.0", "100.0", "1.0"]
    assert rows["candidate"] == ["5", "1", "0.2", "300.0", "300.0", "1.0"]


def test_status_with_nothing_live_says_so():
    """No live rollout: status says so (and names the latest), actions need an id."""
    assert "No rollout is running or paused." in rollout("status")
    with pytest.raises(CommandError, match="No rollout is running or paused"):
        rollout("pause")


def test_pause_resume_advance_promote_from_the_shell():
    """Each transition changes status or weight and writes an event by shell; promote activates the candidate."""
    rollout("start", "--candidate", CANDIDATE, "--mode", "canary", "--stages", '[{"weight": 5}, {"weight": 50}]')
    row = Rollout.objects.get()
    assert "status paused" in rollout("pause", str(row.id))
    assert "status running" in rollout("resume")
    assert "weight 50 %" in rollout("advance", "--reason", "numbers fine")
    rollout("pause")
    with pytest.raises(CommandError, match="already paused"):
        rollout("pause")
    rollout("resume")
    assert "status promoted" in rollout("promote")
    assert detector_version_active().id == CANDIDATE
    actions = list(row.events.order_by("at", "id").values_list("action", "actor"))
    assert actions == [(a, "shell") for a in ("start", "pause", "resume", "advance", "pause", "resume", "promote")]
    assert row.events.get(action="advance").reason == "numbers fine"
    with pytest.raises(CommandError, match="nothing more can change it"):
        rollout("rollback", str(row.id))


def test_rollback_and_end_from_the_shell_leave_the_baseline_active():
    """rollback ends a canary with the baseline active; end closes an A/B test."""
    rollout("start", "--candidate", CANDIDATE, "--mode", "canary")
    assert "status rolled_back, weight 0 %" in rollout("rollback", "--reason", "errors")
    assert detector_version_active().id == BASELINE
    rollout("start", "--candidate", CANDIDATE, "--mode", "ab")
    assert "status ended" in rollout("end")
    assert detector_version_active().id == BASELINE
    assert list(RolloutEvent.objects.order_by("at", "id").values_list("action", flat=True)) == ["start", "rollback", "start", "end"]


def test_an_unknown_id_is_a_command_error():
    """A wrong id: CommandError, not a traceback."""
    with pytest.raises(CommandError, match="No rollout with that id"):
        rollout("status", "12345")


def test_quality_gate_from_the_shell():
    """A candidate worse than the baseline's stored F1 by more than the allowed drop is refused."""
    DetectorVersion.objects.filter(id=BASELINE).update(evaluation={"f1": 0.95})
    DetectorVersion.objects.filter(id=CANDIDATE).update(evaluation={"f1": 0.80})
    with pytest.raises(CommandError, match="scores F1 0.800"):
        rollout("start", "--candidate", CANDIDATE, "--mode", "canary", "--quality-drop-max", "0.1")
    assert rollout("start", "--candidate", CANDIDATE, "--mode", "canary", "--quality-drop-max", "0.2").strip().splitlines()[-1]
