"""Shadow runs, in-process with stub detectors: made with the job, published only once the job is
over, detected and compared with the job's faces, never shown to the client; detection times on
jobs; and the rollout's figures, whose shadow-mode candidate is read from its shadow runs."""

import datetime as dt
import itertools

import pytest
from django.utils import timezone

from callbacks.models import CallbackDelivery
from clients.models import ApiClient
from detection import engines
from detection.compare import agreement
from jobs import services, stats
from jobs.models import Face, Image, ShadowRun
from jobs.representation import image_representation
from registry.models import DetectorVersion
from rollouts.services import rollout_start, shadow_sampled
from storage import s3 as storage
from tests.conftest import photo_bytes, upload
from workers import tasks

pytestmark = [pytest.mark.django_db]

CANDIDATE = "stub@0.0.1"


@pytest.fixture
def published(monkeypatch, s3, stub_detector):
    """Jobs are driven by hand; what would be published by name is recorded here instead. The
    stub (stub@0.0.0) is the baseline and another stub, stub@0.0.1, the candidate."""
    DetectorVersion.objects.create(id=CANDIDATE, name="stub", version="0.0.1", implementation="stub", settings_hash="")
    monkeypatch.setattr("jobs.services.submission.image_job_enqueue", lambda *, image_id: None)
    sent = []

    class Recorded:
        def __init__(self, name, args):
            self.name, self.args = name, args

        def apply_async(self):
            sent.append((self.name, self.args))

    monkeypatch.setattr("jobs.services.shadow.signature", lambda name, args: Recorded(name, args))
    engines.clear_cache()  # cold starts are counted from here
    yield sent
    engines.clear_cache()


def submit(api_client, request_id: str, photo: str = "astronaut_1face.png", **fields) -> Image:
    response = upload(api_client, photo_bytes(photo), request_id=request_id, **fields)
    assert response.status_code == 202, response.content
    return Image.objects.get(id=response.json()["id"])


def shadow_rollout(**kwargs):
    return rollout_start(candidate=CANDIDATE, mode="shadow", actor="test", **kwargs)


def test_a_shadow_rollout_serves_the_baseline_and_queues_a_candidate_run(api_client, published):
    """Shadow mode: the job gets the baseline; a queued candidate run is made with it."""
    rollout = shadow_rollout()
    job = submit(api_client, "shadowed")
    assert job.detector_version_id == "stub@0.0.0" and job.variant == "baseline" and job.rollout_id == rollout.id
    (run,) = ShadowRun.objects.filter(job=job)
    assert (run.status, run.variant, run.detector_version_id, run.rollout_id) == ("queued", "candidate", CANDIDATE, rollout.id)


def test_a_canary_without_a_sample_copies_nothing(api_client, published):
    """A canary's default shadow_sample is 0: the candidate serves, no run is made."""
    rollout_start(candidate=CANDIDATE, mode="canary", actor="test", stages=[{"weight": 100}])
    job = submit(api_client, "unsampled")
    assert job.variant == "candidate"
    assert not ShadowRun.objects.exists()


def test_only_the_sampled_jobs_get_a_shadow_run(api_client, published):
    """shadow_sample 0.5: a run for exactly the jobs shadow_sampled picks, and some of each."""
    rollout = shadow_rollout(shadow_sample=0.5)
    jobs = [submit(api_client, f"sampled-{n}") for n in range(30)]
    picked = {job.id for job in jobs if shadow_sampled(rollout, job.id)}
    assert set(ShadowRun.objects.values_list("job_id", flat=True)) == picked
    assert 0 < len(picked) < len(jobs)


def test_a_canary_copies_its_candidate_jobs_to_the_baseline(api_client, published):
    """Canary at 100 % with shadow_sample 1: the candidate serves, a baseline run is queued."""
    rollout_start(candidate=CANDIDATE, mode="canary", actor="test", stages=[{"weight": 100}], shadow_sample=1.0)
    job = submit(api_client, "canary-copy")
    assert job.detector_version_id == CANDIDATE and job.variant == "candidate"
    (run,) = ShadowRun.objects.filter(job=job)
    assert (run.variant, run.detector_version_id) == ("baseline", "stub@0.0.0")


def test_shadow_runs_are_published_only_once_the_job_is_over(api_client, published, django_capture_on_commit_callbacks):
    """Nothing goes out while the job is queued; once it completes, its run goes out by task name."""
    shadow_rollout()
    job = submit(api_client, "ordered")
    run = ShadowRun.objects.get(job=job)
    with django_capture_on_commit_callbacks(execute=True):
        assert services.image_job_shadows_enqueue(image_id=job.id) == 0
    assert published == []
    services.image_job_detect(image_id=job.id)
    with django_capture_on_commit_callbacks(execute=True):
        assert services.image_job_shadows_enqueue(image_id=job.id) == 1
    assert published == [(services.SHADOW_DETECT_TASK, (run.id,))]
    assert services.SHADOW_DETECT_TASK == "workers.tasks.shadow_detect"


def test_a_failed_job_publishes_its_shadow_run_too(api_client, published, django_capture_on_commit_callbacks):
    """The candidate's error figures come from its runs: a failed job's run still goes out."""
    shadow_rollout()
    job = submit(api_client, "failed-job")
    services.image_job_fail(image_id=job.id, code="test", message="failed by the test")
    with django_capture_on_commit_callbacks(execute=True):
        assert services.image_job_shadows_enqueue(image_id=job.id) == 1
    assert [name for name, _ in published] == [services.SHADOW_DETECT_TASK]


def test_the_detection_task_publishes_the_shadow_run_after_the_job(api_client, published, django_capture_on_commit_callbacks):
    """workers.tasks.detect_faces completes the job, then publishes its shadow run."""
    shadow_rollout()
    job = submit(api_client, "via-task")
    with django_capture_on_commit_callbacks(execute=True):
        tasks.detect_faces.apply(args=(str(job.id),))
    job.refresh_from_db()
    assert job.status == "completed"
    assert published == [(services.SHADOW_DETECT_TASK, (ShadowRun.objects.get(job=job).id,))]


def test_a_task_that_finds_its_job_finished_still_publishes_the_shadow_run(api_client, published, django_capture_on_commit_callbacks):
    """A worker died between finishing the job and publishing its run: the message's next copy
    does not start the job (it is over), so it looks the runs up rather than skip them."""
    shadow_rollout()
    job = submit(api_client, "died-before-publishing")
    services.image_job_detect(image_id=job.id)
    assert published == []
    with django_capture_on_commit_callbacks(execute=True):
        tasks.detect_faces.apply(args=(str(job.id),))
    assert published == [(services.SHADOW_DETECT_TASK, (ShadowRun.objects.get(job=job).id,))]


def test_a_shadow_run_stores_faces_as_the_api_shows_them_with_agreement(api_client, published):
    """The run's faces have the API's detection shape (a face's, with its label), a count, a
    time, and agreement 1 with identical faces."""
    shadow_rollout()
    job = submit(api_client, "compared")
    services.image_job_detect(image_id=job.id)
    run = ShadowRun.objects.get(job=job)
    services.shadow_run_detect(shadow_run_id=run.id)
    run.refresh_from_db()
    shown = image_representation(Image.objects.get(id=job.id))["detections"]
    assert run.status == "completed" and run.faces == shown and run.face_count == 1
    assert run.faces[0]["label"] == "face"
    assert run.detection_ms is not None and run.finished_at is not None
    assert run.agreement == 1.0 and run.error_code == ""


def test_agreement_is_measured_against_the_jobs_own_faces(api_client, published):
    """An extra face on the job: the candidate's one face against the job's two is F1 2/3."""
    shadow_rollout()
    job = submit(api_client, "disagree")
    services.image_job_detect(image_id=job.id)
    Face.objects.create(
        image=job, detector_version_id=job.detector_version_id, index=1, box_x=0, box_y=0, box_width=20, box_height=20, confidence=0.5
    )
    run = ShadowRun.objects.get(job=job)
    services.shadow_run_detect(shadow_run_id=run.id)
    run.refresh_from_db()
    assert run.agreement == pytest.approx(2 / 3)
    assert run.agreement == agreement(
        [(f["box"]["x"], f["box"]["y"], f["box"]["width"], f["box"]["height"]) for f in run.faces],
        [(f.box_x, f.box_y, f.box_width, f.box_height) for f in job.faces.all()],
    )


def test_a_run_of_a_failed_job_has_no_agreement(api_client, published):
    """The job failed: the run still detects, with agreement null (nothing to compare with)."""
    shadow_rollout()
    job = submit(api_client, "no-compare")
    services.image_job_fail(image_id=job.id, code="test", message="failed by the test")
    run = ShadowRun.objects.get(job=job)
    services.shadow_run_detect(shadow_run_id=run.id)
    run.refresh_from_db()
    assert run.status == "completed" and run.face_count == 1 and run.agreement is None


def test_cold_starts_are_recorded_on_jobs_and_shadow_runs(api_client, published):
    """The first job and the first run load their detectors (cold); the next ones do not."""
    shadow_rollout()
    first, second = submit(api_client, "cold-1"), submit(api_client, "cold-2")
    for job in (first, second):
        services.image_job_detect(image_id=job.id)
        services.shadow_run_detect(shadow_run_id=ShadowRun.objects.get(job=job).id)
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.detector_cold, second.detector_cold) == (True, False)
    assert first.detection_ms is not None and second.detection_ms is not None
    runs = [ShadowRun.objects.get(job=job) for job in (first, second)]
    assert [run.detector_cold for run in runs] == [True, False]


def test_a_run_that_is_not_queued_is_skipped(api_client, published):
    """A second copy of the message changes nothing; a finished run cannot be failed."""
    shadow_rollout()
    job = submit(api_client, "twice")
    services.image_job_detect(image_id=job.id)
    run = ShadowRun.objects.get(job=job)
    services.shadow_run_detect(shadow_run_id=run.id)
    finished_at = ShadowRun.objects.get(id=run.id).finished_at
    services.shadow_run_detect(shadow_run_id=run.id)
    assert services.shadow_run_fail(shadow_run_id=run.id, code="late") is False
    run.refresh_from_db()
    assert run.status == "completed" and run.finished_at == finished_at and run.error_code == ""


def test_a_failing_run_fails_alone(api_client, published):
    """An undecodable photo fails the run with a code; the job is untouched, and a failed run stays failed."""
    shadow_rollout()
    job = submit(api_client, "garbage")
    services.image_job_detect(image_id=job.id)
    storage.storage_put(key=job.original_key, data=b"garbage", length=7, content_type="image/png")
    run = ShadowRun.objects.get(job=job)
    services.shadow_run_detect(shadow_run_id=run.id)
    run.refresh_from_db()
    assert run.status == "failed" and run.error_code == "image_unreadable" and run.finished_at
    assert Image.objects.get(id=job.id).status == "completed"
    assert services.shadow_run_fail(shadow_run_id=run.id, code="other") is False


def test_a_missing_photo_fails_the_run_instead_of_retrying(api_client, published):
    """The original is gone: original_missing at once, not a transient error."""
    shadow_rollout()
    job = submit(api_client, "gone")
    services.image_job_fail(image_id=job.id, code="test", message="failed by the test")
    storage.storage_delete(key=job.original_key)
    run = ShadowRun.objects.get(job=job)
    services.shadow_run_detect(shadow_run_id=run.id)
    run.refresh_from_db()
    assert run.status == "failed" and run.error_code == "original_missing"


def test_the_shadow_task_fails_a_run_on_an_unknown_version(api_client, published):
    """workers.tasks.shadow_detect: a version this worker cannot load fails the run with a code."""
    DetectorVersion.objects.create(id="nope@1.0.0", name="nope", version="1.0.0", implementation="nope", settings_hash="")
    shadow_rollout()
    job = submit(api_client, "unknown-impl")
    services.image_job_detect(image_id=job.id)
    run = ShadowRun.objects.get(job=job)
    ShadowRun.objects.filter(id=run.id).update(detector_version_id="nope@1.0.0")
    tasks.shadow_detect.apply(args=(run.id,))
    run.refresh_from_db()
    assert run.status == "failed" and run.error_code == "detector_unavailable"


def test_shadow_results_never_reach_the_client(api_client, published, receiver):
    """The job's JSON is the same before and after its run, and the run makes no callback."""
    shadow_rollout()
    job = submit(api_client, "private", callback_url=receiver.url())
    services.image_job_detect(image_id=job.id)
    Face.objects.filter(image=job).update(box_x=1)  # the job's faces now differ from the run's
    before = api_client.get(f"/api/v1/images/{job.id}/").json()
    services.shadow_run_detect(shadow_run_id=ShadowRun.objects.get(job=job).id)
    assert ShadowRun.objects.get(job=job).faces[0]["box"]["x"] != 1
    assert api_client.get(f"/api/v1/images/{job.id}/").json() == before
    assert not CallbackDelivery.objects.filter(image=job).exists()
    assert receiver.received.empty()


# --- The rollout's figures ------------------------------------------------------------------------


_numbers = itertools.count()


def _job(rollout, variant: str, status: str, *, ms: int | None = None, cold: bool = False, faces: int | None = None) -> Image:
    """A job row as a worker leaves it, made directly: the figures read only rows."""
    n = next(_numbers)
    client, _ = ApiClient.objects.get_or_create(name="figures")
    return Image.objects.create(
        client=client,
        request_id=f"fig-{n}",
        original_key=f"originals/fig-{n}.png",
        original_content_type="image/png",
        original_size=1,
        original_sha256="0" * 64,
        detector_version_id="stub@0.0.0",
        rollout=rollout,
        variant=variant,
        status=status,
        detection_ms=ms,
        detector_cold=cold,
        face_count=faces,
        finished_at=None if status == "queued" else timezone.now(),
    )


def _run(
    rollout, job, variant: str, status: str, *, ms: int | None = None, cold: bool = False, faces: int | None = None, score=None
) -> ShadowRun:
    return ShadowRun.objects.create(
        job=job,
        rollout=rollout,
        detector_version_id=CANDIDATE if variant == "candidate" else "stub@0.0.0",
        variant=variant,
        status=status,
        detection_ms=ms,
        detector_cold=cold,
        face_count=faces,
        agreement=score,
        finished_at=None if status == "queued" else timezone.now(),
    )


def test_in_shadow_mode_the_candidates_figures_come_from_its_shadow_runs(published):
    """jobs = finished runs, failed = failed runs, latency from warm completed runs; the baseline from jobs."""
    rollout = shadow_rollout()
    jobs = [_job(rollout, "baseline", "completed", ms=10 * (i + 1), faces=1) for i in range(4)] + [_job(rollout, "baseline", "failed")]
    _run(rollout, jobs[0], "candidate", "completed", ms=500, cold=True, faces=2, score=0.5)  # cold: no latency
    _run(rollout, jobs[1], "candidate", "completed", ms=30, faces=1, score=1.0)
    _run(rollout, jobs[2], "candidate", "completed", ms=40, faces=1, score=1.0)
    _run(rollout, jobs[3], "candidate", "failed")
    _run(rollout, jobs[4], "candidate", "queued")  # not finished: not counted

    figures = stats.rollout_figures(rollout=rollout, window_seconds=600)
    for span in ("window", "since_start"):
        candidate, baseline = figures[span]["candidate"], figures[span]["baseline"]
        assert (candidate["jobs"], candidate["failed"], candidate["error_rate"]) == (4, 1, 0.25)
        assert (candidate["latency_samples"], candidate["p50_detection_ms"], candidate["p95_detection_ms"]) == (2, 30.0, 40.0)
        assert candidate["faces_per_photo"] == pytest.approx(4 / 3, abs=1e-3)
        assert (baseline["jobs"], baseline["failed"], baseline["p95_detection_ms"]) == (5, 1, 40.0)
        assert figures[span]["agreement"] == {"pairs": 3, "mean": pytest.approx(2.5 / 3, abs=1e-4)}
        assert set(candidate) == set(baseline)


def test_outside_shadow_mode_each_variant_is_read_from_its_jobs(published):
    """A canary: the candidate's figures are its jobs'; the baseline's shadow runs add only agreement."""
    rollout = rollout_start(candidate=CANDIDATE, mode="canary", actor="test", stages=[{"weight": 50}], shadow_sample=1.0)
    served = [_job(rollout, "candidate", "completed", ms=20, faces=1) for _ in range(3)]
    _job(rollout, "baseline", "completed", ms=10, faces=1)
    for job in served:
        _run(rollout, job, "baseline", "failed")
    figures = stats.rollout_figures(rollout=rollout, window_seconds=600)["since_start"]
    assert (figures["candidate"]["jobs"], figures["candidate"]["failed"]) == (3, 0)
    assert (figures["baseline"]["jobs"], figures["baseline"]["failed"]) == (1, 0)


def test_shadow_runs_outside_the_window_are_left_out(published):
    """The window counts runs finished in it; since_start counts them all."""
    rollout = shadow_rollout()
    job = _job(rollout, "baseline", "completed", ms=10, faces=1)
    old = _run(rollout, job, "candidate", "completed", ms=10, faces=1, score=1.0)
    ShadowRun.objects.filter(id=old.id).update(finished_at=timezone.now() - dt.timedelta(hours=2))
    figures = stats.rollout_figures(rollout=rollout, window_seconds=600)
    assert figures["window"]["candidate"]["jobs"] == 0 and figures["since_start"]["candidate"]["jobs"] == 1


def test_job_and_shadow_run_figures_have_one_shape(published):
    """Both sources give the same keys, so the guardrails read either alike."""
    assert set(stats.job_figures(Image.objects.none())) == set(stats.shadow_run_figures(ShadowRun.objects.none()))


def test_the_admin_shows_the_rollout_and_the_shadow_runs(api_client, published, client):
    """The job's page shows its rollout, variant and cohort, and its shadow runs inline; the list filters by variant."""
    from django.contrib.auth.models import User

    User.objects.create_superuser("ops", "ops@example.com", "pw")
    client.login(username="ops", password="pw")
    rollout = shadow_rollout()
    job = submit(api_client, "in-admin", cohort="camera-42")
    services.image_job_detect(image_id=job.id)
    services.shadow_run_detect(shadow_run_id=ShadowRun.objects.get(job=job).id)
    html = client.get(f"/admin/jobs/image/{job.id}/change/").content.decode()
    assert "camera-42" in html and str(rollout.candidate_id) in html
    assert "Agreement" in html or "agreement" in html  # the shadow runs inline
    listed = client.get("/admin/jobs/image/?variant=baseline")
    assert listed.status_code == 200 and "in-admin" in listed.content.decode()
    assert "in-admin" not in client.get("/admin/jobs/image/?variant=candidate").content.decode()


def test_a_photo_that_kept_killing_workers_is_not_run_again_in_the_shadow(api_client, published):
    """The job failed with too_many_attempts: its run fails with that code instead of detecting."""
    shadow_rollout()
    job = submit(api_client, "poison")
    for _ in range(services.MAX_DETECT_ATTEMPTS):
        services.image_job_start(image_id=job.id, redelivered=True)
    services.image_job_detect(image_id=job.id, redelivered=True)
    run = ShadowRun.objects.get(job=job)
    services.shadow_run_detect(shadow_run_id=run.id)
    run.refresh_from_db()
    assert run.status == "failed" and run.error_code == "too_many_attempts" and run.detection_ms is None


def test_a_job_the_sweeper_fails_publishes_its_shadow_run(api_client, published, settings, django_capture_on_commit_callbacks):
    """A stuck job failed by the sweeper gets no detection task again, so the sweeper publishes its run."""
    shadow_rollout()
    job = submit(api_client, "stuck")
    Image.objects.filter(id=job.id).update(
        enqueue_count=settings.JOB_MAX_ENQUEUES, enqueued_at=timezone.now() - dt.timedelta(seconds=settings.JOB_QUEUED_TIMEOUT + 60)
    )
    with django_capture_on_commit_callbacks(execute=True):
        assert services.image_jobs_sweep()["failed"] == 1
    assert published == [(services.SHADOW_DETECT_TASK, (ShadowRun.objects.get(job=job).id,))]


def test_a_shadow_run_whose_publish_failed_is_published_by_the_sweeper(api_client, published, settings, monkeypatch):
    """The broker was down when the job ended: the run stays unpublished until the sweeper's turn."""
    shadow_rollout()
    job = submit(api_client, "publish-lost")
    services.image_job_detect(image_id=job.id)
    with monkeypatch.context() as broker_down:
        broker_down.setattr("jobs.services.shadow._shadow_run_publish", lambda run_id: False)
        assert services.image_job_shadows_enqueue(image_id=job.id) == 1
    run = ShadowRun.objects.get(job=job)
    assert run.enqueued_at is None and published == []
    assert services.shadow_runs_sweep() == {"shadows_republished": 0, "shadows_failed": 0}  # within the grace
    Image.objects.filter(id=job.id).update(finished_at=timezone.now() - dt.timedelta(seconds=settings.JOB_UNPUBLISHED_GRACE + 1))
    assert services.shadow_runs_sweep() == {"shadows_republished": 1, "shadows_failed": 0}
    assert published == [(services.SHADOW_DETECT_TASK, (run.id,))]
    run.refresh_from_db()
    assert run.enqueued_at is not None and run.enqueue_count == 1


def test_a_shadow_run_published_too_often_fails_as_stuck(api_client, published, settings):
    shadow_rollout()
    job = submit(api_client, "publish-stuck")
    services.image_job_detect(image_id=job.id)
    Image.objects.filter(id=job.id).update(finished_at=timezone.now() - dt.timedelta(seconds=settings.JOB_UNPUBLISHED_GRACE + 1))
    ShadowRun.objects.filter(job=job).update(enqueue_count=settings.JOB_MAX_ENQUEUES)
    assert services.shadow_runs_sweep() == {"shadows_republished": 0, "shadows_failed": 1}
    run = ShadowRun.objects.get(job=job)
    assert run.status == "failed" and run.error_code == "stuck"
    assert Image.objects.get(id=job.id).status == "completed"  # the job itself is untouched


def test_a_shadow_message_that_keeps_killing_workers_ends_too_many_attempts(api_client, published):
    """Each start is counted; redelivered once more after MAX_DETECT_ATTEMPTS starts, it fails."""
    shadow_rollout()
    job = submit(api_client, "shadow-poison")
    services.image_job_detect(image_id=job.id)
    run = ShadowRun.objects.get(job=job)
    ShadowRun.objects.filter(id=run.id).update(attempts=services.MAX_DETECT_ATTEMPTS)
    services.shadow_run_detect(shadow_run_id=run.id, redelivered=True)
    run.refresh_from_db()
    assert run.status == "failed" and run.error_code == "too_many_attempts" and run.detection_ms is None


def test_a_shadow_run_counts_its_starts(api_client, published):
    shadow_rollout()
    job = submit(api_client, "shadow-count")
    services.image_job_detect(image_id=job.id)
    run = ShadowRun.objects.get(job=job)
    services.shadow_run_detect(shadow_run_id=run.id)
    run.refresh_from_db()
    assert run.status == "completed" and run.attempts == 1
