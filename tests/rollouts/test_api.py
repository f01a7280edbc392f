"""Rollouts over HTTP: operators only, every bad input a 400 naming the field, one rollout at a
time, and each transition by hand changes the routing and leaves an event."""

import pytest

from core.errors import DomainError
from jobs.models import Image
from registry.models import DetectorVersion
from registry.services import detector_version_activate, detector_version_active, detector_version_retire
from rollouts import services
from rollouts.models import Rollout, RolloutEvent
from tests.conftest import upload

from .conftest import BASELINE, CANDIDATE, finished_jobs, png_bytes

pytestmark = [pytest.mark.django_db]

ROUTES = [
    ("get", "/api/v1/rollouts/"),
    ("post", "/api/v1/rollouts/"),
    ("get", "/api/v1/rollouts/{id}/"),
    *[("post", f"/api/v1/rollouts/{{id}}/{action}/") for action in ("promote", "rollback", "pause", "resume", "advance", "end")],
]


def start(client, **body):
    return client.post("/api/v1/rollouts/", {"candidate": CANDIDATE, "mode": "canary", **body}, format="json")


def active_in_models(client) -> list[str]:
    return [row["id"] for row in client.get("/api/v1/models/").json()["results"] if row["active"]]


# --- Starting ------------------------------------------------------------------------------------


def test_an_operator_starts_a_canary(operator, operator_name):
    """201 with the plan, stage 1 of 2 at 5 %, figures per variant, workers warm and the start event."""
    response = start(
        operator, stages=[{"weight": 5, "min_seconds": 60, "min_jobs": 10}, {"weight": 50}], guardrails={"error_rate_max": 0.1}
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["status"] == "running" and body["mode"] == "canary"
    assert body["baseline"] == BASELINE and body["candidate"] == CANDIDATE
    assert body["weight"] == 5
    assert body["stage"]["index"] == 0 and body["stage"]["number"] == 1 and body["stage"]["of"] == 2
    assert body["stages"] == [{"weight": 5, "min_seconds": 60, "min_jobs": 10}, {"weight": 50, "min_seconds": 0, "min_jobs": 0}]
    assert body["guardrails"]["error_rate_max"] == 0.1 and body["guardrails"]["window_seconds"] == 600
    assert body["created_by"] == f"operator:{operator_name}" and body["ended_at"] is None
    assert set(body["figures"]["window"]) == {"baseline", "candidate", "agreement"}
    assert body["figures"]["since_start"]["candidate"]["jobs"] == 0
    assert body["workers_warm"] == {"live": 0, "loaded": 0}
    [event] = body["events"]
    assert event["action"] == "start" and event["actor"] == f"operator:{operator_name}" and event["to_status"] == "running"
    assert event["from_weight"] == 0 and event["to_weight"] == 5
    assert Rollout.objects.get().id.hex == body["id"].replace("-", "")


@pytest.mark.parametrize(
    "body, field, code",
    [
        ({"candidate": "nope@9.9.9"}, "candidate", "unknown_model_version"),
        ({"candidate": "x" * 300}, "candidate", "unknown_model_version"),
        ({"candidate": BASELINE}, "candidate", "candidate_is_baseline"),
        ({"candidate": None}, "candidate", None),
        ({"candidate": 7}, "candidate", None),
        ({"mode": "linear"}, "mode", None),
        ({"mode": None}, "mode", None),
        ({"stages": [{"weight": 0}]}, "stages", None),
        ({"stages": [{"weight": 101}]}, "stages", None),
        ({"stages": [{"weight": -5}]}, "stages", None),
        ({"stages": [{"weight": 50}, {"weight": 25}]}, "stages", None),
        ({"stages": [{"weight": 25}, {"weight": 25}]}, "stages", None),
        ({"stages": [{"weight": 5.5}]}, "stages", None),
        ({"stages": [{"weight": 5, "min_seconds": -5}]}, "stages", None),
        ({"stages": [{"weight": 5, "min_seconds": 10**9}]}, "stages", None),
        ({"stages": [{"weight": 5, "speed": 2}]}, "stages", None),
        ({"stages": []}, "stages", None),
        ({"stages": "fast"}, "stages", None),
        ({"mode": "ab", "stages": [{"weight": 10}, {"weight": 20}]}, "stages", None),
        ({"mode": "shadow", "stages": [{"weight": 10}]}, "stages", None),
        ({"guardrails": {"latency_max": 2}}, "guardrails", "unknown_guardrail"),
        ({"guardrails": {"window_seconds": -5}}, "guardrails", None),
        ({"guardrails": {"window_seconds": 10**9}}, "guardrails", None),
        ({"guardrails": {"window_seconds": 60.5}}, "guardrails", None),
        ({"guardrails": {"error_rate_max": 2}}, "guardrails", None),
        ({"guardrails": {"error_rate_max": True}}, "guardrails", None),
        ({"guardrails": {"p95_latency_ratio_max": 0.5}}, "guardrails", None),
        ({"guardrails": {"consecutive_breaches": 0}}, "guardrails", None),
        ({"guardrails": [1]}, "guardrails", None),
        ({"guardrails": {"agreement_min": 0.9}}, "shadow_sample", None),
        ({"mode": "blue_green", "guardrails": {"agreement_min": 0.9}}, "guardrails", None),
        ({"shadow_sample": 1.5}, "shadow_sample", None),
        ({"shadow_sample": -0.1}, "shadow_sample", None),
        ({"shadow_sample": "lots"}, "shadow_sample", None),
        ({"mode": "shadow", "shadow_sample": 0}, "shadow_sample", None),
        ({"quality_drop_max": -1}, "quality_drop_max", None),
        ({"quality_drop_max": 5}, "quality_drop_max", None),
    ],
)
def test_bad_input_is_a_400_naming_the_field(operator, body, field, code):
    """Each bad input: 400 in the error shape, naming the field; nothing is started."""
    response = start(operator, **body)
    assert response.status_code == 400, response.json()
    error = response.json()["error"]
    assert error["field"] == field, error
    if code:
        assert error["code"] == code
    assert not Rollout.objects.exists() and not RolloutEvent.objects.exists()


def test_a_retired_candidate_is_refused(operator):
    """A retired version cannot be rolled out: 400 retired_model_version on candidate."""
    detector_version_retire(version_id=CANDIDATE)
    error = start(operator).json()["error"]
    assert (error["field"], error["code"]) == ("candidate", "retired_model_version")
    assert not Rollout.objects.exists()


@pytest.mark.parametrize("candidate", ["mtcnn\x00@1.1.0", "m" * 65])
def test_the_service_refuses_a_candidate_that_cannot_be_an_id(candidate):
    """A NUL or an overlong id (possible from the shell) is an unknown version, not a database error."""
    with pytest.raises(DomainError) as refused:
        services.rollout_start(candidate=candidate, mode="canary", actor="shell")
    assert (refused.value.field, refused.value.code) == ("candidate", "unknown_model_version")


def test_a_missing_body_field_and_a_non_json_body_are_refused(operator):
    """No candidate: 400 on candidate; a form body: 415 (the route takes JSON)."""
    response = operator.post("/api/v1/rollouts/", {"mode": "canary"}, format="json")
    assert response.status_code == 400 and response.json()["error"]["field"] == "candidate"
    response = operator.post("/api/v1/rollouts/", {"candidate": CANDIDATE, "mode": "canary"}, format="multipart")
    assert response.status_code == 415 and response.json()["error"]["code"] == "unsupported_media_type"
    assert not Rollout.objects.exists()


def test_a_second_rollout_is_a_409(operator, canary):
    """While one rollout is live another is refused with rollout_in_progress."""
    response = start(operator, mode="ab")
    assert response.status_code == 409 and response.json()["error"]["code"] == "rollout_in_progress"
    assert Rollout.objects.count() == 1


def test_a_new_rollout_may_start_once_the_last_ended(operator, canary):
    """After an end the next rollout starts (the one-at-a-time rule counts live ones only)."""
    assert operator.post(f"/api/v1/rollouts/{canary['id']}/end/", format="json").status_code == 200
    assert start(operator, mode="shadow").status_code == 201


# --- Who may --------------------------------------------------------------------------------------


@pytest.mark.parametrize("method, route", ROUTES)
def test_client_keys_get_403_and_no_key_401(api_client, anonymous_client, canary, method, route):
    """Every rollouts route: a client's key 403 forbidden, no key 401; nothing changes."""
    path = route.format(id=canary["id"])
    body = {"candidate": CANDIDATE, "mode": "ab"} if route == "/api/v1/rollouts/" else {}
    response = getattr(api_client, method)(path, body, format="json")
    assert response.status_code == 403, response.content
    assert response.json()["error"]["code"] == "forbidden"
    assert getattr(anonymous_client, method)(path, body, format="json").status_code == 401
    rollout = Rollout.objects.get()
    assert (rollout.status, rollout.weight, rollout.events.count()) == ("running", 5, 1)


def test_clients_still_read_the_models(api_client):
    """GET /api/v1/models/ stays open to client keys."""
    assert api_client.get("/api/v1/models/").status_code == 200


# --- Reading --------------------------------------------------------------------------------------


def test_list_is_paginated_and_detail_has_the_events(operator, canary):
    """The list pages rollouts newest first; the detail carries figures, workers and events."""
    operator.post(f"/api/v1/rollouts/{canary['id']}/end/", {"reason": "enough"}, format="json")
    second = start(operator, mode="ab").json()
    page = operator.get("/api/v1/rollouts/?page_size=1").json()
    assert page["count"] == 2 and page["next"] and [row["id"] for row in page["results"]] == [second["id"]]
    assert operator.get(page["next"]).json()["results"][0]["id"] == canary["id"]
    detail = operator.get(f"/api/v1/rollouts/{canary['id']}/").json()
    assert detail["status"] == "ended" and detail["ended_at"]
    assert [(e["action"], e["reason"]) for e in detail["events"]] == [
        ("start", "canary of mtcnn@1.1.0 from mtcnn@1.0.0"),
        ("end", "enough"),
    ]
    assert detail["workers_warm"] == {"live": 0, "loaded": 0}


def test_detail_has_each_variants_figures_on_the_window_and_since_the_start(operator, canary):
    """Seeded finished jobs show up per variant, in both spans."""
    finished_jobs(canary["id"], "baseline", count=3, detection_ms=120)
    finished_jobs(canary["id"], "candidate", count=2, detection_ms=240, failed=1)
    figures = operator.get(f"/api/v1/rollouts/{canary['id']}/").json()["figures"]
    assert figures["window_seconds"] == 600
    for span in ("window", "since_start"):
        baseline, candidate = figures[span]["baseline"], figures[span]["candidate"]
        assert (baseline["jobs"], baseline["failed"], baseline["p95_detection_ms"]) == (3, 0, 120)
        assert (candidate["jobs"], candidate["failed"], candidate["error_rate"], candidate["p95_detection_ms"]) == (2, 1, 0.5, 240)
        assert figures[span]["agreement"] == {"pairs": 0, "mean": None}


@pytest.mark.parametrize("rollout_id", ["00000000-0000-0000-0000-000000000000", "not-a-uuid", "%00"])
def test_an_unknown_rollout_is_a_404(operator, rollout_id):
    """A well-formed unknown id, or no id at all: 404 not_found."""
    for response in (operator.get(f"/api/v1/rollouts/{rollout_id}/"), operator.post(f"/api/v1/rollouts/{rollout_id}/pause/")):
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


# --- By hand --------------------------------------------------------------------------------------


def test_promote_makes_the_candidate_active_and_ends_the_rollout(operator, operator_name, canary, api_client):
    """Promote: /api/v1/models/ shows the candidate active; the rollout is promoted and over."""
    assert active_in_models(api_client) == [BASELINE]
    response = operator.post(f"/api/v1/rollouts/{canary['id']}/promote/", {"reason": "looks good"}, format="json")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "promoted" and body["weight"] == 100 and body["ended_at"]
    assert active_in_models(api_client) == [CANDIDATE]
    event = body["events"][-1]
    assert (event["action"], event["actor"], event["reason"]) == ("promote", f"operator:{operator_name}", "looks good")
    assert (event["from_status"], event["to_status"]) == ("running", "promoted")
    again = operator.post(f"/api/v1/rollouts/{canary['id']}/rollback/", format="json")
    assert again.status_code == 409 and again.json()["error"]["code"] == "rollout_not_live"
    assert detector_version_active().id == CANDIDATE


def test_rollback_leaves_the_baseline_active_for_new_uploads(operator, api_client, s3, monkeypatch):
    """At 100 % new uploads get the candidate; after a rollback they get the baseline."""
    monkeypatch.setattr("jobs.services.submission.image_job_enqueue", lambda *, image_id: None)
    rollout = start(operator, stages=[{"weight": 100}]).json()
    during = upload(api_client, png_bytes(1), request_id="during").json()["id"]
    assert Image.objects.get(id=during).detector_version_id == CANDIDATE
    response = operator.post(f"/api/v1/rollouts/{rollout['id']}/rollback/", {"reason": "too slow"}, format="json")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "rolled_back" and body["weight"] == 0 and body["ended_at"]
    assert body["events"][-1]["action"] == "rollback" and body["events"][-1]["reason"] == "too slow"
    after = upload(api_client, png_bytes(2), request_id="after").json()["id"]
    job = Image.objects.get(id=after)
    assert job.detector_version_id == BASELINE and job.rollout_id is None
    assert active_in_models(api_client) == [BASELINE]
    # A job accepted during the rollout keeps the version it was routed to.
    assert Image.objects.get(id=during).detector_version_id == CANDIDATE


def test_pause_resume_and_advance_each_change_the_rollout_and_write_an_event(operator, canary):
    """pause -> paused; resume -> running; advance -> 25 % at stage 2; advance past the last -> promoted."""
    url = f"/api/v1/rollouts/{canary['id']}"
    paused = operator.post(f"{url}/pause/", {"reason": "lunch"}, format="json").json()
    assert paused["status"] == "paused" and paused["weight"] == 5
    again = operator.post(f"{url}/pause/", format="json")
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_paused"
    resumed = operator.post(f"{url}/resume/", format="json").json()
    assert resumed["status"] == "running"
    advanced = operator.post(f"{url}/advance/", format="json").json()
    assert advanced["weight"] == 25 and advanced["stage"]["number"] == 2 and advanced["status"] == "running"
    events = [(e["action"], e["from_status"], e["to_status"], e["from_weight"], e["to_weight"]) for e in advanced["events"]]
    assert events == [
        ("start", None, "running", 0, 5),
        ("pause", "running", "paused", 5, 5),
        ("resume", "paused", "running", 5, 5),
        ("advance", "running", "running", 5, 25),
    ]
    assert advanced["events"][1]["reason"] == "lunch"
    last = operator.post(f"{url}/advance/", format="json").json()
    assert last["status"] == "promoted" and last["events"][-1]["action"] == "promote"
    assert detector_version_active().id == CANDIDATE


def retired_behind_the_rollouts_back(version_id: str) -> None:
    """Retired as a release before the refusal (detector_version_retire now refuses a live
    rollout's versions) could leave it: the safe ways out must still work."""
    from django.utils import timezone

    from registry.models import DetectorVersion

    DetectorVersion.objects.filter(id=version_id).update(retired_at=timezone.now())


def test_a_candidate_retired_during_the_rollout_cannot_be_promoted(operator, canary):
    """Promote after the candidate was retired: 409, still running; a rollback still works."""
    retired_behind_the_rollouts_back(CANDIDATE)
    response = operator.post(f"/api/v1/rollouts/{canary['id']}/promote/", format="json")
    assert response.status_code == 409 and response.json()["error"]["code"] == "candidate_not_activatable"
    assert Rollout.objects.get().status == "running" and detector_version_active().id == BASELINE
    assert operator.post(f"/api/v1/rollouts/{canary['id']}/rollback/", format="json").json()["status"] == "rolled_back"


def test_a_rollback_ends_the_rollout_even_when_the_baseline_cannot_come_back(operator, canary):
    """Baseline retired meanwhile (after activating another by hand): the rollback still stops the routing, and says so."""
    detector_version_activate(version_id=CANDIDATE)
    retired_behind_the_rollouts_back(BASELINE)
    response = operator.post(f"/api/v1/rollouts/{canary['id']}/rollback/", format="json")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "rolled_back" and "baseline_not_reactivated" in body["events"][-1]["figures"]
    assert services.rollout_live() is None


def test_only_a_canary_advances(operator):
    """An A/B test has no stages to advance through: 409, and it stays as it was."""
    ab = start(operator, mode="ab").json()
    response = operator.post(f"/api/v1/rollouts/{ab['id']}/advance/", format="json")
    assert response.status_code == 409 and response.json()["error"]["code"] == "not_a_canary"
    assert Rollout.objects.get().weight == 50


def test_a_bad_reason_is_a_400(operator, canary):
    """reason must be text of at most 1000 characters; the rollout does not change."""
    for body in ({"reason": "x" * 1001}, {"reason": ["a"]}):
        response = operator.post(f"/api/v1/rollouts/{canary['id']}/pause/", body, format="json")
        assert response.status_code == 400 and response.json()["error"]["field"] == "reason"
    assert Rollout.objects.get().status == "running"


# --- The quality gate -----------------------------------------------------------------------------


def _evaluate(version_id: str, f1: float) -> None:
    DetectorVersion.objects.filter(id=version_id).update(evaluation={"f1": f1, "photos": 8})


def test_quality_gate_refuses_a_worse_candidate(operator):
    """Candidate F1 0.70 against the baseline's 0.90 with quality_drop_max 0.05: 400 quality_gate."""
    _evaluate(BASELINE, 0.90)
    _evaluate(CANDIDATE, 0.70)
    response = start(operator, quality_drop_max=0.05)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("quality_gate", "candidate")
    assert not Rollout.objects.exists()


def test_quality_gate_lets_a_close_candidate_through_with_its_figures(operator):
    """Candidate F1 0.88 against 0.90 with quality_drop_max 0.05: started, the figures in the event."""
    _evaluate(BASELINE, 0.90)
    _evaluate(CANDIDATE, 0.88)
    body = start(operator, quality_drop_max=0.05).json()
    assert body["quality_drop_max"] == 0.05
    assert body["events"][0]["figures"] == {"baseline_f1": 0.90, "candidate_f1": 0.88, "quality_drop_max": 0.05}


@pytest.mark.parametrize("evaluated", [[], [BASELINE], [CANDIDATE]])
def test_quality_gate_without_evaluations_is_a_400(operator, evaluated):
    """No stored F1 for either version: the gate cannot judge, so it refuses (400 quality_gate)."""
    for version_id in evaluated:
        _evaluate(version_id, 0.9)
    response = start(operator, quality_drop_max=0.05)
    assert response.status_code == 400 and response.json()["error"]["code"] == "quality_gate"
    assert not Rollout.objects.exists()


# --- Release records in the model representation --------------------------------------------------


def test_models_show_release_records_and_the_evaluation(api_client):
    """dataset, build, image and evaluation: null until recorded, then as stored."""
    body = api_client.get(f"/api/v1/models/{CANDIDATE}/").json()
    assert {key: body[key] for key in ("dataset", "build", "image", "evaluation")} == dict.fromkeys(
        ("dataset", "build", "image", "evaluation")
    )
    assert {"id", "label", "active", "weights", "settings", "notes", "created_at"} <= set(body)  # nothing lost
    DetectorVersion.objects.filter(id=CANDIDATE).update(
        dataset={"tag": "faces-2024", "sha256": "ab" * 32}, build="b-17", image="fda:1.1.0", evaluation={"f1": 0.93}
    )
    body = api_client.get(f"/api/v1/models/{CANDIDATE}/").json()
    assert body["dataset"] == {"tag": "faces-2024", "sha256": "ab" * 32}
    assert (body["build"], body["image"], body["evaluation"]) == ("b-17", "fda:1.1.0", {"f1": 0.93})
    listed = {row["id"]: row for row in api_client.get("/api/v1/models/").json()["results"]}
    assert listed[CANDIDATE]["evaluation"] == {"f1": 0.93} and listed[BASELINE]["evaluation"] is None
