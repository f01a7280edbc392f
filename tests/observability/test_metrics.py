"""GET /metrics and what the services record into it, in-process (the stub detector, jobs driven
by hand), plus multi-process mode with real processes that die.

The test process runs prometheus_client in single-process mode, so its counters live as long as
the run: every check compares a scrape before with a scrape after.
"""

import datetime as dt
import io
import os
import signal
import subprocess
import sys
import time
from collections import Counter as Tally

import pytest
from PIL import Image as PILImage
from prometheus_client.parser import text_string_to_metric_families

from callbacks import services as delivery
from core import metrics
from jobs import services
from jobs.models import Image, ShadowRun
from registry.models import DetectorVersion
from rollouts.services import rollout_start
from tests.conftest import ROOT, photo_bytes, require, upload

pytestmark = [pytest.mark.django_db]

Samples = dict[tuple[str, frozenset], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(client) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    return parse(response.content.decode())


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def label_values(samples: Samples) -> set[str]:
    return {v for (name, labels) in samples if name.startswith("fda_") for _, v in labels}


@pytest.fixture
def by_hand(monkeypatch, s3, stub_detector):
    """Jobs are not published: the tests drive them."""
    monkeypatch.setattr("jobs.services.submission.image_job_enqueue", lambda *, image_id: None)


def submit(api_client, request_id: str, **fields) -> Image:
    response = upload(api_client, photo_bytes("astronaut_1face.png"), request_id=request_id, **fields)
    assert response.status_code == 202, response.content
    return Image.objects.get(id=response.json()["id"])


# --- The endpoint -----------------------------------------------------------------------------------


def test_metrics_need_no_api_key_and_use_the_workloads_buckets(anonymous_client):
    """No key: 200 in the Prometheus text format; histograms bucket from 25 ms to 120 s; no job, no variant is "none"."""
    with metrics.detection_timed(model_version="probe@0.0.0", variant=""):
        pass
    response = anonymous_client.get("/metrics")
    assert response.status_code == 200
    families = {family.name: family for family in text_string_to_metric_families(response.content.decode())}
    assert {"fda_detection_seconds", "fda_callback_deliveries_pending", "fda_queue_depth"} <= set(families)
    buckets = [
        sample.labels["le"]
        for sample in families["fda_detection_seconds"].samples
        if sample.name.endswith("_bucket") and sample.labels["model_version"] == "probe@0.0.0"
    ]
    assert buckets == ["0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "5.0", "10.0", "25.0", "60.0", "120.0", "+Inf"]
    assert {
        sample.labels["variant"] for sample in families["fda_detection_seconds"].samples if sample.labels["model_version"] == "probe@0.0.0"
    } == {"none"}


def test_metrics_refuse_addresses_outside_the_allowed_networks(anonymous_client, api_client, settings):
    """METRICS_ALLOWED_NETWORKS set: 403 elsewhere, even with an API key; 200 inside."""
    settings.METRICS_ALLOWED_NETWORKS = ["10.0.0.0/8", "192.168.7.0/24"]
    refused = api_client.get("/metrics", REMOTE_ADDR="192.168.8.1")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    assert anonymous_client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 403
    assert anonymous_client.get("/metrics", REMOTE_ADDR="10.20.30.40").status_code == 200
    assert anonymous_client.get("/metrics", REMOTE_ADDR="192.168.7.9").status_code == 200


def test_a_misspelt_allowed_network_lets_nobody_in(anonymous_client, settings):
    """A typo in METRICS_ALLOWED_NETWORKS closes the endpoint instead of opening it."""
    settings.METRICS_ALLOWED_NETWORKS = ["10.0.0.0/8", "not-a-network"]
    assert anonymous_client.get("/metrics", REMOTE_ADDR="10.1.1.1").status_code == 403


def test_the_queue_depth_is_read_from_the_broker(anonymous_client, settings):
    """A message waiting in the detect queue shows in fda_queue_depth{queue}, the deliver queue beside it."""
    require("rabbitmq")
    from face_detect_api.celery import app

    detect = next(queue for queue in settings.CELERY_TASK_QUEUES if queue.name == settings.CELERY_QUEUE_DETECT)
    with app.connection_for_write() as conn:
        # Declared (as a worker would) and emptied, so that the one message published is the depth.
        for queue in settings.CELERY_TASK_QUEUES:
            queue(conn.default_channel).declare()
            queue(conn.default_channel).purge()
        conn.Producer().publish({"probe": 1}, exchange=detect.exchange, routing_key=detect.routing_key)
    try:
        deadline = time.monotonic() + 10
        while True:
            samples = scrape(anonymous_client)
            if value(samples, "fda_queue_depth", queue=settings.CELERY_QUEUE_DETECT) == 1 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert value(samples, "fda_queue_depth", queue=settings.CELERY_QUEUE_DETECT) == 1
        assert ("fda_queue_depth", frozenset({("queue", settings.CELERY_QUEUE_DELIVER)})) in samples
    finally:
        with app.connection_for_write() as conn:
            for queue in settings.CELERY_TASK_QUEUES:
                queue(conn.default_channel).purge()


def test_a_broker_that_does_not_answer_leaves_queue_depth_out(anonymous_client, settings):
    """The scrape still answers 200, without fda_queue_depth samples."""
    settings.CELERY_BROKER_URL = "amqp://guest:guest@127.0.0.1:9//"
    samples = scrape(anonymous_client)
    assert not [key for key in samples if key[0] == "fda_queue_depth"]


# --- What the services record ------------------------------------------------------------------------


def test_uploads_refused_are_counted_by_reason(api_client, anonymous_client, by_hand):
    """415, 400 and 401 on POST /api/v1/images/ count under their error codes; other routes' 4xx do not."""
    before = scrape(anonymous_client)
    ppm = io.BytesIO()
    PILImage.new("RGB", (8, 8)).save(ppm, "PPM")
    assert upload(api_client, ppm.getvalue(), request_id="refused-1", name="x.ppm").status_code == 415
    assert upload(api_client, b"junk", request_id="refused-4").json()["error"]["code"] == "image_unreadable"
    assert api_client.post("/api/v1/images/", {"request_id": "refused-2"}, format="multipart").status_code == 400
    assert upload(anonymous_client, photo_bytes("coffee.png"), request_id="refused-3").status_code == 401
    assert api_client.get("/api/v1/images/00000000-0000-0000-0000-000000000000/").status_code == 404
    after = scrape(anonymous_client)
    assert delta(before, after, "fda_uploads_refused_total", reason="unsupported_image_format") == 1
    assert delta(before, after, "fda_uploads_refused_total", reason="required") == 1
    assert delta(before, after, "fda_uploads_refused_total", reason="image_unreadable") == 1
    assert delta(before, after, "fda_uploads_refused_total", reason="not_authenticated") == 1
    assert delta(before, after, "fda_uploads_refused_total", reason="not_found") == 0
    refused = {labels for (name, labels) in after if name == "fda_uploads_refused_total"}
    assert all(dict(labels).keys() == {"reason"} for labels in refused)


def test_a_job_records_its_wait_detection_cpu_and_end_once(api_client, anonymous_client, by_hand, django_capture_on_commit_callbacks):
    """One job: a queue wait, a detection and CPU time for its version (variant none), one completed; a repeat adds nothing."""
    job = submit(api_client, "metrics-lifecycle")
    before = scrape(anonymous_client)
    with django_capture_on_commit_callbacks(execute=True):
        services.image_job_detect(image_id=job.id)
    with django_capture_on_commit_callbacks(execute=True):
        services.image_job_detect(image_id=job.id)  # already completed: skipped
        assert services.image_job_fail(image_id=job.id, code="x", message="y") is False
    after = scrape(anonymous_client)
    labels = dict(model_version="stub@0.0.0", variant="none")
    assert delta(before, after, "fda_queue_wait_seconds_count", **labels) == 1
    assert delta(before, after, "fda_detection_seconds_count", **labels) == 1
    assert delta(before, after, "fda_detection_seconds_bucket", le="+Inf", **labels) == 1
    assert delta(before, after, "fda_detection_cpu_seconds_total", model_version="stub@0.0.0") >= 0
    assert ("fda_detection_cpu_seconds_total", frozenset({("model_version", "stub@0.0.0")})) in after
    assert delta(before, after, "fda_jobs_finished_total", status="completed", error_code="none", **labels) == 1
    assert sum(delta(before, after, name, **dict(key)) for (name, key) in after if name == "fda_jobs_finished_total") == 1


def test_every_way_a_job_fails_counts_once(api_client, anonymous_client, by_hand, settings, django_capture_on_commit_callbacks):
    """A failed detection, too_many_attempts and the sweeper's stuck: each one failed count with its code."""
    unreadable = submit(api_client, "metrics-unreadable")
    crashing = submit(api_client, "metrics-crashing")
    stuck = submit(api_client, "metrics-stuck")
    from storage import s3 as storage

    storage.storage_put(key=unreadable.original_key, data=b"garbage", length=7, content_type="image/png")
    for _ in range(services.MAX_DETECT_ATTEMPTS):
        services.image_job_start(image_id=crashing.id, redelivered=True)
    Image.objects.filter(id=stuck.id).update(
        enqueue_count=settings.JOB_MAX_ENQUEUES, created_at=stuck.created_at - dt.timedelta(seconds=settings.JOB_UNPUBLISHED_GRACE + 5)
    )
    before = scrape(anonymous_client)
    with django_capture_on_commit_callbacks(execute=True):
        services.image_job_detect(image_id=unreadable.id)
        services.image_job_detect(image_id=crashing.id, redelivered=True)
        assert services.image_jobs_sweep()["failed"] == 1
        assert services.image_jobs_sweep()["failed"] == 0  # already failed: not again
    after = scrape(anonymous_client)
    labels = dict(model_version="stub@0.0.0", variant="none", status="failed")
    for code in ("image_unreadable", "too_many_attempts", "stuck"):
        assert delta(before, after, "fda_jobs_finished_total", error_code=code, **labels) == 1, code
    # The unreadable job's first start; the crashing job's fourth start fails it without starting.
    assert delta(before, after, "fda_queue_wait_seconds_count", model_version="stub@0.0.0", variant="none") == 1


def test_a_rollout_job_and_its_shadow_run_are_labelled_by_version_and_variant(api_client, anonymous_client, by_hand, monkeypatch):
    """The served baseline and the candidate's shadow run each count a detection under their own version and variant."""
    # Nothing published: the job's chain and the shadow run's publish.
    monkeypatch.setattr("jobs.services.submission._publish_chain", lambda image_id: None)
    monkeypatch.setattr("jobs.services.shadow.signature", lambda name, args: type("Sent", (), {"apply_async": lambda self: None})())
    DetectorVersion.objects.create(id="stub@0.0.1", name="stub", version="0.0.1", implementation="stub", settings_hash="")
    rollout_start(candidate="stub@0.0.1", mode="shadow", actor="test")
    job = submit(api_client, "metrics-shadow", cohort="cohort-secret-7")
    before = scrape(anonymous_client)
    services.image_job_detect(image_id=job.id)
    services.shadow_run_detect(shadow_run_id=ShadowRun.objects.get(job=job).id)
    after = scrape(anonymous_client)
    assert delta(before, after, "fda_detection_seconds_count", model_version="stub@0.0.0", variant="baseline") == 1
    assert delta(before, after, "fda_detection_seconds_count", model_version="stub@0.0.1", variant="candidate") == 1
    assert "cohort-secret-7" not in label_values(after)


def test_callback_attempts_are_counted_by_outcome(api_client, anonymous_client, by_hand, receiver, settings):
    """retry, delivered (with the whole job's time once), failed and refused; a redelivery adds no job time."""
    delivered = submit(api_client, "metrics-cb-1", callback_url=receiver.url())
    failed = submit(api_client, "metrics-cb-2", callback_url=receiver.url())
    refused = submit(api_client, "metrics-cb-3", callback_url=receiver.url())
    for job in (delivered, failed, refused):
        services.image_job_detect(image_id=job.id)
    before = scrape(anonymous_client)
    receiver.script = [503, 200, 410]
    first = services.image_job_callback_delivery(image_id=delivered.id)
    retry_in = delivery.callback_delivery_attempt(delivery_id=first.id)  # 503: retry
    assert retry_in is not None
    time.sleep(retry_in)
    assert delivery.callback_delivery_attempt(delivery_id=first.id) is None  # 200
    assert delivery.callback_delivery_attempt(delivery_id=services.image_job_callback_delivery(image_id=failed.id).id) is None  # 410
    settings.CALLBACK_ALLOWED_NETWORKS = []
    assert delivery.callback_delivery_attempt(delivery_id=services.image_job_callback_delivery(image_id=refused.id).id) is None
    settings.CALLBACK_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    again = services.image_job_redeliver(image_id=delivered.id)
    assert delivery.callback_delivery_attempt(delivery_id=again.id) is None  # 200 again
    after = scrape(anonymous_client)
    outcomes = {o: delta(before, after, "fda_callback_attempts_total", outcome=o) for o in metrics.CALLBACK_OUTCOMES}
    assert outcomes == {"retry": 1, "delivered": 2, "failed": 1, "refused": 1}
    assert delta(before, after, "fda_job_seconds_count", model_version="stub@0.0.0", variant="none") == 1


def test_no_label_carries_an_id_a_request_id_a_client_or_a_cohort(
    api_client, anonymous_client, by_hand, receiver, django_capture_on_commit_callbacks
):
    """After jobs, a failure, a callback and a refusal, every fda_ label value is from a bounded set."""
    jobs = [submit(api_client, f"rid-secret-{n}", callback_url=receiver.url(), cohort=f"cohort-secret-{n}") for n in range(2)]
    with django_capture_on_commit_callbacks(execute=True):
        services.image_job_detect(image_id=jobs[0].id)
        services.image_job_fail(image_id=jobs[1].id, code="internal_error", message="boom")
    for job in jobs:
        delivery.callback_delivery_attempt(delivery_id=services.image_job_callback_delivery(image_id=job.id).id)
    upload(api_client, b"junk", request_id="rid-secret-refused")
    values = label_values(scrape(anonymous_client))
    secrets = {str(job.id) for job in jobs} | {job.request_id for job in jobs} | {job.cohort for job in jobs}
    secrets |= {jobs[0].client.name, "rid-secret-refused", receiver.url()}
    assert not {v for v in values for s in secrets if s in v}
    # The client's numeric id is a short number: only an exact label value would be a leak (it is
    # a substring of bucket bounds such as "10.0").
    assert str(jobs[0].client.id) not in values
    assert {"stub@0.0.0", "none", "completed", "failed", "internal_error", "delivered"} <= values


# --- Multi-process mode ------------------------------------------------------------------------------

CHILD = """
import os, sys, time
from core import metrics
metrics.DETECTION_SECONDS.labels("mp@1.0.0", "none").observe(0.1)
metrics.detector_versions_loaded(int(sys.argv[1]))
print("ready", flush=True)
time.sleep(600)
"""


def _child(path, loaded: int) -> subprocess.Popen:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(path), "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-c", CHILD, str(loaded)], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    return process


def test_a_killed_process_keeps_its_counts_and_drops_its_live_gauge(tmp_path, monkeypatch):
    """Two processes record; one is SIGKILLed: its detections still count, its versions-loaded series goes."""
    survivor, victim = _child(tmp_path, 1), _child(tmp_path, 2)
    try:
        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
        from prometheus_client import generate_latest

        samples = parse(generate_latest(metrics.scrape_registry()).decode())
        assert value(samples, "fda_detection_seconds_count", model_version="mp@1.0.0", variant="none") == 2
        assert value(samples, "fda_detector_versions_loaded", pid=str(victim.pid)) == 2
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        samples = parse(generate_latest(metrics.scrape_registry()).decode())
        assert value(samples, "fda_detection_seconds_count", model_version="mp@1.0.0", variant="none") == 2
        loaded = Tally(dict(labels)["pid"] for (name, labels) in samples if name == "fda_detector_versions_loaded")
        assert loaded == Tally({str(survivor.pid): 1})
    finally:
        for process in (survivor, victim):
            process.kill()
            process.wait()


def test_an_empty_multiproc_dir_means_single_process_mode(tmp_path):
    """PROMETHEUS_MULTIPROC_DIR="" (an empty env file line) must not write metric files into the working directory."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": "", "PYTHONPATH": str(ROOT)}
    code = (
        "from core import metrics; from prometheus_client import values; "
        "metrics.upload_refused(reason='x'); print(values.ValueClass.__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "MutexValue" and list(tmp_path.iterdir()) == []
