"""Routing jobs during a rollout: by cohort (else by client), sticky, in the split's proportion;
an explicit model_version bypasses it; the job JSON and the callback show the rollout."""

import json
import math

import pytest

from callbacks import services as delivery
from clients.services import api_key_create
from jobs import services
from jobs.models import Image, ShadowRun
from registry.models import DetectorVersion
from rollouts.services import cohort_key, rollout_advance, rollout_end, rollout_route, rollout_start, variant_for
from tests.conftest import photo_bytes, upload

pytestmark = [pytest.mark.django_db]

BASELINE, CANDIDATE = "mtcnn@1.0.0", "mtcnn@1.1.0"


@pytest.fixture(autouse=True)
def _not_published(monkeypatch, s3):
    """Jobs are accepted and stored, never published: routing is decided at submission."""
    monkeypatch.setattr("jobs.services.submission.image_job_enqueue", lambda *, image_id: None)


def canary(*weights: int, shadow_sample: float = 0.0):
    """A canary of mtcnn@1.1.0 through ``weights`` (%), at the first one."""
    stages = [{"weight": w, "min_seconds": 0, "min_jobs": 0} for w in weights]
    return rollout_start(candidate=CANDIDATE, mode="canary", actor="test", stages=stages, shadow_sample=shadow_sample)


def binomial_bounds(n: int, p: float, sigmas: float = 5.0) -> tuple[float, float]:
    """The range a fair split of n keys at share p falls in, but for a one-in-millions chance."""
    spread = sigmas * math.sqrt(n * p * (1 - p))
    return n * p - spread, n * p + spread


def candidates(rollout, keys) -> set[str]:
    return {key for key in keys if variant_for(rollout, key) == "candidate"}


def test_the_same_cohort_always_gets_the_same_variant_and_version(api_client):
    """Twenty uploads from each of several cohorts: one variant and one version per cohort."""
    rollout = canary(50)
    cohorts = [f"camera-{n}" for n in range(6)]
    for cohort in cohorts:
        for n in range(20):
            assert upload(api_client, photo_bytes("coffee.png"), request_id=f"{cohort}-{n}", cohort=cohort).status_code == 202
    for cohort in cohorts:
        jobs = Image.objects.filter(cohort=cohort)
        assert jobs.count() == 20
        assert {(job.rollout_id, job.variant, job.detector_version_id) for job in jobs} == {
            (
                rollout.id,
                variant_for(rollout, f"cohort:{cohort}"),
                CANDIDATE if variant_for(rollout, f"cohort:{cohort}") == "candidate" else BASELINE,
            )
        }
    # Routing is a function of the cohort, so asking again gives the same answer every time.
    for _ in range(50):
        assert rollout_route(client_id=1, cohort="camera-0").variant == variant_for(rollout, "cohort:camera-0")


def test_a_cohort_on_the_candidate_stays_there_as_the_weight_rises():
    """5 -> 25 -> 50 -> 100 %: every cohort on the candidate before is on it after."""
    rollout = canary(5, 25, 50, 100)
    cohorts = [f"user-{n}" for n in range(400)]

    def on_candidate() -> set[str]:
        routes = {c: rollout_route(client_id=1, cohort=c) for c in cohorts}
        assert all((r.version.id == CANDIDATE) == (r.variant == "candidate") for r in routes.values())
        return {c for c, r in routes.items() if r.variant == "candidate"}

    before = on_candidate()
    assert before  # about 5 % of 400 cohorts
    for weight in (25, 50, 100):
        rollout = rollout_advance(rollout_id=rollout.id, actor="test")
        assert rollout.weight == weight
        after = on_candidate()
        assert before <= after and len(after) > len(before)
        before = after
    assert before == set(cohorts)


@pytest.mark.parametrize("weights", [(5,), (50,), (100,)], ids=["5%", "50%", "100%"])
def test_the_split_over_many_cohorts_is_the_weight(weights):
    """2000 cohorts through rollout_route: the candidate's share is the weight, within binomial bounds."""
    rollout = canary(*weights)
    weight = rollout.weight / 100
    routes = [rollout_route(client_id=7, cohort=f"device-{n}") for n in range(2000)]
    on_candidate = sum(route.variant == "candidate" for route in routes)
    low, high = binomial_bounds(2000, weight)
    assert low <= on_candidate <= high, (on_candidate, low, high)
    # The version follows the variant, and every route names the rollout.
    assert all(route.rollout.id == rollout.id for route in routes)
    assert all((route.version.id == CANDIDATE) == (route.variant == "candidate") for route in routes)


def test_uploads_through_the_api_follow_the_split(api_client):
    """Forty uploads with distinct cohorts at 50 %: each job is where its cohort routes, both sides served."""
    rollout = canary(50)
    for n in range(40):
        assert upload(api_client, photo_bytes("coffee.png"), request_id=f"split-{n}", cohort=f"cam-{n}").status_code == 202
    jobs = list(Image.objects.filter(request_id__startswith="split-"))
    assert len(jobs) == 40
    for job in jobs:
        expected = variant_for(rollout, cohort_key(client_id=job.client_id, cohort=job.cohort))
        assert job.rollout_id == rollout.id and job.variant == expected
        assert job.detector_version_id == (CANDIDATE if expected == "candidate" else BASELINE)
    assert {job.variant for job in jobs} == {"baseline", "candidate"}


def test_the_split_at_100_and_at_5_percent_through_the_api(api_client):
    """At 100 % every upload gets the candidate; at 5 % a handful of uploads land where their cohort routes."""
    rollout = canary(100)
    for n in range(5):
        upload(api_client, photo_bytes("coffee.png"), request_id=f"all-{n}", cohort=f"c-{n}")
    assert set(Image.objects.filter(request_id__startswith="all-").values_list("variant", "detector_version_id")) == {
        ("candidate", CANDIDATE)
    }

    rollout_end(rollout_id=rollout.id, actor="test")
    small = canary(5)
    for n in range(10):
        upload(api_client, photo_bytes("coffee.png"), request_id=f"few-{n}", cohort=f"c-{n}")
    for job in Image.objects.filter(request_id__startswith="few-"):
        assert job.rollout_id == small.id and job.variant == variant_for(small, f"cohort:{job.cohort}")


def test_without_a_cohort_jobs_are_keyed_by_their_client(api_client):
    """No cohort: the client is the key, so all of a client's jobs get one side, and clients split."""
    rollout = canary(50)
    for n in range(5):
        upload(api_client, photo_bytes("coffee.png"), request_id=f"mine-{n}")
    mine = list(Image.objects.filter(request_id__startswith="mine-"))
    assert {job.cohort for job in mine} == {""}
    assert {job.variant for job in mine} == {variant_for(rollout, f"client:{mine[0].client_id}")}

    from rest_framework.test import APIClient

    sides = set()
    for n in range(30):
        other = APIClient()
        other.credentials(HTTP_X_API_KEY=api_key_create(client_name=f"routing-{n}")[1])
        upload(other, photo_bytes("coffee.png"), request_id="same-id")
    for job in Image.objects.filter(request_id="same-id"):
        assert job.variant == variant_for(rollout, cohort_key(client_id=job.client_id))
        sides.add(job.variant)
    assert sides == {"baseline", "candidate"}


def test_an_explicit_model_version_bypasses_the_rollout(api_client):
    """model_version named: that version, no rollout, no variant, no shadow run, and rollout null in the JSON."""
    canary(100, shadow_sample=1.0)
    response = upload(api_client, photo_bytes("coffee.png"), request_id="pinned", cohort="cam-1", model_version=BASELINE)
    assert response.status_code == 202
    job = Image.objects.get(id=response.json()["id"])
    assert job.detector_version_id == BASELINE and job.rollout is None and job.variant == ""
    assert job.cohort == "cam-1"
    assert not ShadowRun.objects.filter(job=job).exists()
    assert api_client.get(f"/api/v1/images/{job.id}/").json()["rollout"] is None


def test_outside_a_rollout_the_active_version_serves_and_rollout_is_null(api_client):
    """No live rollout: the active version, rollout null."""
    response = upload(api_client, photo_bytes("coffee.png"), request_id="plain", cohort="cam-1")
    job = Image.objects.get(id=response.json()["id"])
    assert job.detector_version_id == BASELINE and job.rollout is None
    assert api_client.get(f"/api/v1/images/{job.id}/").json()["rollout"] is None


def test_the_rollout_block_is_in_get_and_in_the_callback(api_client, receiver):
    """GET and the callback body both carry {"id", "variant"} of the routing rollout."""
    rollout = canary(100)
    response = upload(api_client, photo_bytes("coffee.png"), request_id="shown", cohort="cam-9", callback_url=receiver.url())
    image_id = response.json()["id"]
    expected = {"id": str(rollout.id), "variant": "candidate"}
    assert api_client.get(f"/api/v1/images/{image_id}/").json()["rollout"] == expected
    assert api_client.get("/api/v1/images/?request_id=shown").json()["results"][0]["rollout"] == expected

    # Finish the job by hand (no detector needed) and send its callback to the real receiver.
    services.image_job_fail(image_id=image_id, code="test", message="finished by the test")
    outbox_row = services.image_job_callback_delivery(image_id=image_id)
    delivery.callback_delivery_attempt(delivery_id=outbox_row.id)
    (callback,) = receiver.wait(1)
    body = json.loads(callback["body"])
    assert body["rollout"] == expected
    assert body["model_version"] == DetectorVersion.objects.get(id=CANDIDATE).label


def test_a_repeat_is_idempotent_and_a_different_cohort_is_a_conflict(api_client):
    """Same request_id, photo and cohort: the same job (200); another cohort: 409 request_id_conflict."""
    canary(50)
    first = upload(api_client, photo_bytes("coffee.png"), request_id="again", cohort="cam-1")
    again = upload(api_client, photo_bytes("coffee.png"), request_id="again", cohort="cam-1")
    assert first.status_code == 202 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    other = upload(api_client, photo_bytes("coffee.png"), request_id="again", cohort="cam-2")
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "request_id_conflict"
    none = upload(api_client, photo_bytes("coffee.png"), request_id="again")
    assert none.status_code == 409
    assert Image.objects.filter(request_id="again").count() == 1


@pytest.mark.parametrize("cohort", ["  ", "x" * 129, "tab\there", "line\nbreak"])
def test_a_bad_cohort_is_refused_naming_the_field(api_client, cohort):
    """Blank, too long or unprintable: 400 with error.field == "cohort", no job."""
    response = upload(api_client, photo_bytes("coffee.png"), request_id="bad-cohort", cohort=cohort)
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "cohort"
    assert not Image.objects.filter(request_id="bad-cohort").exists()


def test_a_cohort_of_128_printable_characters_is_accepted(api_client):
    """The longest cohort, with spaces and non-ASCII letters, is kept as given."""
    cohort = ("caméra 7 " * 20)[:128]
    response = upload(api_client, photo_bytes("coffee.png"), request_id="long-cohort", cohort=cohort)
    assert response.status_code == 202
    assert Image.objects.get(id=response.json()["id"]).cohort == cohort
