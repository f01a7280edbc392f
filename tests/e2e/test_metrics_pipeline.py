"""Metrics end to end: real jobs through a real worker (MTCNN, two pool processes) in
multi-process mode, scraped from the API's GET /metrics and from the worker's own endpoint; a
pool process is SIGKILLed between jobs and nothing it counted is lost."""

import os
import signal
import socket
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

# Imported now, before any test sets PROMETHEUS_MULTIPROC_DIR: this process stays in single-process
# mode (prometheus_client picks the mode at import) and reads the worker's files only when scraping.
from core import metrics  # noqa: F401
from jobs.models import Image
from tests.conftest import WorkerProcess, photo_bytes, upload, wait_terminal
from tests.e2e.test_faults import wait_for

pytestmark = [pytest.mark.django_db(transaction=True)]

V100, V110 = "mtcnn@1.0.0", "mtcnn@1.1.0"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def metrics_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("metrics")


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return _free_port()


@pytest.fixture(scope="module")
def worker(worker_env, metrics_dir, metrics_port, tmp_path_factory):
    """This module's worker: two pool processes writing their metrics into metrics_dir, and the
    parent serving them on metrics_port (as each compose worker container does)."""
    env = {**worker_env, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "WORKER_METRICS_PORT": str(metrics_port)}
    process = WorkerProcess(tmp_path_factory.mktemp("worker") / "worker.log", env, concurrency=2).start()
    yield process
    process.stop()


@pytest.fixture
def scrape(anonymous_client, metrics_dir, monkeypatch):
    """GET /metrics of the API, reading the worker's directory (as `make up` shares one)."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))

    def scrape() -> dict:
        response = anonymous_client.get("/metrics")
        assert response.status_code == 200
        return parse(response.content.decode())

    return scrape


def parse(text: str) -> dict:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: dict, name: str, **labels: str) -> float:
    """The sum over every series of ``name`` that has these labels (and any others)."""
    return sum(v for (n, key), v in samples.items() if n == name and set(labels.items()) <= key)


def run_jobs(api_client, receiver, prefix: str, versions: list[str]) -> list[Image]:
    """Submit one job per entry (a version id, or "" for the active one), all with a callback, and wait until all are settled."""
    ids = []
    for n, version in enumerate(versions):
        fields = {"model_version": version} if version else {}
        response = upload(
            api_client,
            photo_bytes("obama_1face.jpg"),
            name="obama_1face.jpg",
            request_id=f"{prefix}-{n}",
            callback_url=receiver.url(),
            **fields,
        )
        assert response.status_code == 202, response.content
        ids.append(response.json()["id"])
    jobs = [wait_terminal(image_id) for image_id in ids]
    assert all(job.status == "completed" for job in jobs)
    return jobs


def expect_counts(scrape, per_version: dict[str, int]) -> dict:
    """The scrape once every callback of ``per_version``'s jobs is counted (recorded just after
    the delivery row commits, so a moment after the job reads as settled)."""
    jobs = sum(per_version.values())

    def counted():
        samples = scrape()
        return samples if total(samples, "fda_callback_attempts_total", outcome="delivered") >= jobs else None

    return wait_for(counted, 60, f"{jobs} delivered callbacks in the metrics", interval=0.2)


def test_detections_per_version_match_the_jobs_even_after_a_pool_process_is_killed(
    api_client, worker, receiver, s3, scrape, metrics_dir, metrics_port
):
    """3+2 jobs, SIGKILL a pool process that ran some, 2+1 more: every count equals the jobs run per version, on both endpoints."""
    first = run_jobs(api_client, receiver, "metrics-a", ["", "", "", V110, V110])
    assert [job.detector_version_id for job in first] == [V100, V100, V100, V110, V110]
    samples = expect_counts(scrape, {V100: 3, V110: 2})
    assert value(samples, "fda_detection_seconds_count", model_version=V100, variant="none") == 3
    assert value(samples, "fda_detection_seconds_count", model_version=V110, variant="none") == 2

    # A pool process that recorded detections, killed while idle: its files stay in the directory.
    children = worker.child_pids()
    recorded = [pid for pid in children if (metrics_dir / f"histogram_{pid}.db").exists()]
    assert len(children) == 2 and recorded
    victim = recorded[0]
    os.kill(victim, signal.SIGKILL)
    replacement = wait_for(
        lambda: [pid for pid in worker.child_pids() if pid not in children and f"worker process {pid} ready" in worker.log()],
        120,
        "the pool to replace the killed process",
    )[0]

    second = run_jobs(api_client, receiver, "metrics-b", ["", "", V110])
    samples = expect_counts(scrape, {V100: 5, V110: 3})
    assert value(samples, "fda_detection_seconds_count", model_version=V100, variant="none") == 5
    assert value(samples, "fda_detection_seconds_count", model_version=V110, variant="none") == 3
    assert value(samples, "fda_queue_wait_seconds_count", model_version=V100, variant="none") == 5
    assert value(samples, "fda_queue_wait_seconds_count", model_version=V110, variant="none") == 3
    assert value(samples, "fda_jobs_finished_total", model_version=V100, variant="none", status="completed", error_code="none") == 5
    assert value(samples, "fda_jobs_finished_total", model_version=V110, variant="none", status="completed", error_code="none") == 3
    assert total(samples, "fda_jobs_finished_total") == 8
    assert value(samples, "fda_callback_attempts_total", outcome="delivered") == 8
    assert total(samples, "fda_callback_attempts_total") == 8
    assert value(samples, "fda_job_seconds_count", model_version=V100, variant="none") == 5
    assert value(samples, "fda_job_seconds_count", model_version=V110, variant="none") == 3
    for version in (V100, V110):
        assert value(samples, "fda_detection_cpu_seconds_total", model_version=version) > 0
    assert value(samples, "fda_callback_deliveries_pending") == 0

    # The worker's own endpoint (a compose scrape target) adds up the same files.
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
        own = parse(response.read().decode())
    for name in ("fda_detection_seconds_count", "fda_jobs_finished_total", "fda_callback_attempts_total"):
        assert total(own, name) == total(samples, name), name

    # Versions loaded: one series per live pool process; the killed one's is gone.
    def loaded_pids():
        pids = {dict(key)["pid"] for (name, key) in scrape() if name == "fda_detector_versions_loaded"}
        return pids if pids == {str(pid) for pid in worker.child_pids()} else None

    pids = wait_for(loaded_pids, 60, "a versions-loaded series for each live pool process", interval=0.5)
    assert str(victim) not in pids and str(replacement) in pids

    # No label names a job, a request or a client.
    values = {v for (name, key) in samples if name.startswith("fda_") for _, v in key}
    secrets = {str(job.id) for job in first + second} | {job.request_id for job in first + second} | {first[0].client.name}
    assert not {v for v in values for secret in secrets if secret in v}
