"""Rollouts end to end on real services and a real worker (MTCNN): clients get the version they
are routed to, shadow runs are measured on the real output and never reach the client, and a
worker killed mid-rollout loses nothing."""

import json

import pytest

from callbacks.models import CallbackDelivery
from detection.compare import agreement, boxes_of
from jobs.models import Face, Image, ShadowRun
from jobs.stats import rollout_figures
from registry.models import DetectorVersion
from rollouts.services import cohort_key, rollout_start, variant_for
from tests.conftest import photo_bytes, upload, wait_terminal
from tests.e2e.test_faults import tiled, wait_for

pytestmark = [pytest.mark.django_db(transaction=True)]

BASELINE, CANDIDATE = "mtcnn@1.0.0", "mtcnn@1.1.0"
PHOTOS = ("obama_1face.jpg", "astronaut_1face.png", "grace_hopper_1face.jpg", "coffee.png")


def label(version_id: str) -> str:
    return DetectorVersion.objects.get(id=version_id).label


def shadow_runs_finished(job_ids, count: int, timeout: float = 180) -> list[ShadowRun]:
    """The jobs' shadow runs once ``count`` of them exist and none is queued any more."""

    def finished():
        runs = list(ShadowRun.objects.filter(job_id__in=job_ids))
        return runs if len(runs) == count and all(run.status != "queued" for run in runs) else None

    return wait_for(finished, timeout, f"{count} shadow runs to finish", interval=0.2)


def job_boxes(job_id) -> list[tuple]:
    return [(f.box_x, f.box_y, f.box_width, f.box_height) for f in Face.objects.filter(image_id=job_id)]


def called_back_once(receiver, image_id) -> bool:
    """The job has one delivery, tried once, and the receiver holds no request beyond those
    already taken (a shadow run's or a second callback would be there)."""
    deliveries = list(CallbackDelivery.objects.filter(image_id=image_id))
    return len(deliveries) == 1 and deliveries[0].attempt_count == 1 and receiver.received.empty()


def test_a_shadow_rollout_answers_from_the_baseline_and_measures_the_candidate(api_client, worker, receiver, s3):
    """Every answer and callback is mtcnn@1.0.0's; the candidate's runs are stored, compared on the real output."""
    rollout = rollout_start(candidate=CANDIDATE, mode="shadow", actor="test")
    ids = {}
    for n, name in enumerate(PHOTOS):
        fields = {"cohort": f"camera-{n}"} if n % 2 else {}  # with and without a cohort
        response = upload(api_client, photo_bytes(name), name=name, request_id=f"shadow-{name}", callback_url=receiver.url(), **fields)
        assert response.status_code == 202, response.content
        ids[name] = response.json()["id"]

    callbacks = {json.loads(c["body"])["id"]: json.loads(c["body"]) for c in receiver.wait(len(PHOTOS))}
    assert set(callbacks) == set(ids.values())
    for name, image_id in ids.items():
        body = callbacks[image_id]
        assert body["status"] == "completed", (name, body["error"])
        assert body["model_version"] == label(BASELINE), name
        assert body["rollout"] == {"id": str(rollout.id), "variant": "baseline"}
        wait_terminal(image_id)
        shown = api_client.get(f"/api/v1/images/{image_id}/").json()
        assert {k: v for k, v in shown.items() if k != "callback"} == {k: v for k, v in body.items() if k != "callback"}
    assert callbacks[ids["obama_1face.jpg"]]["face_count"] == 2  # the baseline keeps the 0.82 background face

    runs = {run.job_id: run for run in shadow_runs_finished(ids.values(), len(PHOTOS))}
    for name, image_id in ids.items():
        run = runs[Image.objects.get(id=image_id).id]
        assert (run.status, run.variant, run.detector_version_id, run.rollout_id) == ("completed", "candidate", CANDIDATE, rollout.id), name
        assert run.detection_ms is not None and run.face_count == len(run.faces)
        # Agreement as stored is the F1 of the stored faces against the job's own.
        assert run.agreement == pytest.approx(agreement(boxes_of(run.faces), job_boxes(image_id)))
    obama = runs[Image.objects.get(id=ids["obama_1face.jpg"]).id]
    assert obama.face_count == 1 and obama.agreement == pytest.approx(2 / 3)
    assert all(runs[Image.objects.get(id=ids[name]).id].agreement == 1.0 for name in PHOTOS[1:])
    assert sum(run.detector_cold for run in runs.values()) <= 1  # loaded once, on the first run at most

    # The client heard once per job, from the baseline only; the shadow runs said nothing.
    for image_id in ids.values():
        assert called_back_once(receiver, image_id)
        assert api_client.get(f"/api/v1/images/{image_id}/").json()["model_version"] == label(BASELINE)
    assert all(job.detection_ms is not None for job in Image.objects.filter(id__in=ids.values()))

    # The candidate's figures are its shadow runs'.
    figures = rollout_figures(rollout=rollout, window_seconds=3600)["since_start"]
    assert (figures["baseline"]["jobs"], figures["candidate"]["jobs"], figures["candidate"]["failed"]) == (4, 4, 0)
    assert figures["agreement"]["pairs"] == 4


def test_a_canary_at_100_percent_serves_the_candidate_and_the_baseline_shadows_it(api_client, worker, receiver, s3):
    """The candidate answers (1 face on obama); a baseline run (2 faces) measures agreement 2/3."""
    rollout = rollout_start(
        candidate=CANDIDATE, mode="canary", actor="test", stages=[{"weight": 100, "min_seconds": 0, "min_jobs": 0}], shadow_sample=1.0
    )
    image_id = upload(
        api_client,
        photo_bytes("obama_1face.jpg"),
        name="obama_1face.jpg",
        request_id="canary-obama",
        cohort="camera-1",
        callback_url=receiver.url(),
    ).json()["id"]
    (callback,) = receiver.wait(1)
    body = json.loads(callback["body"])
    assert body["id"] == image_id and body["status"] == "completed"
    assert body["model_version"] == label(CANDIDATE) and body["face_count"] == 1
    assert body["rollout"] == {"id": str(rollout.id), "variant": "candidate"}

    (run,) = shadow_runs_finished([image_id], 1)
    assert (run.status, run.variant, run.detector_version_id) == ("completed", "baseline", BASELINE)
    assert run.face_count == 2 and run.agreement == pytest.approx(2 / 3)
    assert run.agreement == pytest.approx(agreement(job_boxes(image_id), boxes_of(run.faces)))
    wait_terminal(image_id)
    assert called_back_once(receiver, image_id)
    assert api_client.get(f"/api/v1/images/{image_id}/").json()["face_count"] == 1


def test_a_worker_killed_mid_rollout_loses_nothing(api_client, worker, receiver, s3):
    """SIGKILL the worker while it detects; restarted, every job ends once, counted under the variant it was routed to."""
    rollout = rollout_start(
        candidate=CANDIDATE, mode="ab", actor="test", stages=[{"weight": 50, "min_seconds": 0, "min_jobs": 0}], shadow_sample=1.0
    )
    # Three cohorts on each side (the split is a hash of the rollout's id, new each run).
    cohorts = [f"cam-{n}" for n in range(100)]
    sides = {v: [c for c in cohorts if variant_for(rollout, f"cohort:{c}") == v][:3] for v in ("baseline", "candidate")}
    chosen = ["slow", *sides["baseline"], *sides["candidate"]]

    ids = {}
    for cohort in chosen:
        data = tiled(4) if cohort == "slow" else photo_bytes("astronaut_1face.png")
        response = upload(api_client, data, request_id=f"killed-{cohort}", cohort=cohort, callback_url=receiver.url())
        assert response.status_code == 202, response.content
        ids[cohort] = response.json()["id"]
        if cohort == "slow":
            wait_for(lambda: Image.objects.get(id=ids["slow"]).status == "processing", 60, "detection to start")
            worker.kill()
            assert Image.objects.get(id=ids["slow"]).status == "processing"  # killed before it finished
    worker.start()  # the module's worker, back for the next tests

    jobs = {cohort: wait_terminal(image_id) for cohort, image_id in ids.items()}
    assert all(job.status == "completed" for job in jobs.values())
    assert jobs["slow"].attempts == 2 and jobs["slow"].face_count == 16
    for job in jobs.values():
        assert Face.objects.filter(image=job).count() == job.face_count

    # One callback per job, none twice.
    callbacks = [json.loads(c["body"]) for c in receiver.wait(len(ids))]
    assert sorted(body["id"] for body in callbacks) == sorted(ids.values())
    for body in callbacks:
        job = Image.objects.get(id=body["id"])
        assert body["rollout"] == {"id": str(rollout.id), "variant": job.variant}
        assert body["model_version"] == label(CANDIDATE if job.variant == "candidate" else BASELINE)

    # Each job went where its cohort routes, and the figures count it there.
    routed = {"baseline": 0, "candidate": 0}
    for cohort, job in jobs.items():
        assert job.variant == variant_for(rollout, cohort_key(client_id=job.client_id, cohort=cohort))
        routed[job.variant] += 1
    figures = rollout_figures(rollout=rollout, window_seconds=3600)["since_start"]
    assert {v: figures[v]["jobs"] for v in routed} == routed
    assert figures["baseline"]["failed"] == figures["candidate"]["failed"] == 0

    # The candidate's jobs were each copied to the baseline, and those runs finished too.
    candidate_ids = [job.id for job in jobs.values() if job.variant == "candidate"]
    runs = shadow_runs_finished(candidate_ids, len(candidate_ids))
    assert all(run.status == "completed" and run.variant == "baseline" for run in runs)
    assert all(called_back_once(receiver, image_id) for image_id in ids.values())
