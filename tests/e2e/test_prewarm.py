"""Pre-warm on a real worker: each detection pool process loads the live rollout's candidate and
reports it in its heartbeat, so the rollout sees every worker warm and the first candidate job
pays no model load; a process that exits withdraws its heartbeat."""

import socket
import time

import pytest

from registry.models import WorkerHeartbeat
from registry.services import workers_warm
from rollouts.services import rollout_start
from tests.conftest import WorkerProcess, photo_bytes, upload, wait_terminal

pytestmark = [pytest.mark.django_db(transaction=True)]

BASELINE, CANDIDATE = "mtcnn@1.0.0", "mtcnn@1.1.0"
PROCESSES = 2


@pytest.fixture(scope="module")
def worker(worker_env, tmp_path_factory):
    """A real worker with two pool processes that beat every second (the default is 5)."""
    env = {**worker_env, "WORKER_HEARTBEAT_SECONDS": "1"}
    process = WorkerProcess(tmp_path_factory.mktemp("worker") / "worker.log", env, concurrency=PROCESSES).start()
    yield process
    process.stop()


def wait_for(condition, what: str, timeout: float = 60):
    """Poll ``condition`` until it returns a true value, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"not within {timeout}s: {what}")


def test_rollout_candidate_is_loaded_by_every_worker_before_its_first_job(api_client, worker, s3):
    """Started rollout: every live pool process reports the candidate; the first candidate job is not cold."""
    wait_for(
        lambda: workers_warm(version_id=BASELINE) == {"live": PROCESSES, "loaded": PROCESSES}, "both processes beat with the active version"
    )
    assert workers_warm(version_id=CANDIDATE) == {"live": PROCESSES, "loaded": 0}

    rollout_start(
        candidate=CANDIDATE, mode="canary", actor="operator:test", stages=[{"weight": 100, "min_seconds": 3600, "min_jobs": 1000}]
    )
    wait_for(
        lambda: workers_warm(version_id=CANDIDATE) == {"live": PROCESSES, "loaded": PROCESSES}, "every process has the candidate loaded"
    )
    # The baseline stays loaded as well: its cohorts still come.
    assert workers_warm(version_id=BASELINE) == {"live": PROCESSES, "loaded": PROCESSES}

    response = upload(api_client, photo_bytes("grace_hopper_1face.jpg"), name="grace_hopper_1face.jpg", request_id="prewarm-first")
    assert response.status_code == 202, response.content
    job = wait_terminal(response.json()["id"])
    assert job.status == "completed", (job.error_code, job.error_message)
    assert job.variant == "candidate" and job.detector_version_id == CANDIDATE
    assert job.detector_cold is False


def test_a_process_that_exits_withdraws_its_heartbeat(worker_env, tmp_path):
    """A worker stopped normally leaves no heartbeat behind to be counted until it goes stale."""
    own = WorkerProcess(tmp_path / "worker.log", {**worker_env, "WORKER_HEARTBEAT_SECONDS": "1"}).start()
    try:
        names = {f"{socket.gethostname()}:{pid}" for pid in own.child_pids()}
        assert len(names) == 1
        wait_for(lambda: WorkerHeartbeat.objects.filter(worker__in=names).count() == 1, "the pool process beats")
    finally:
        own.stop()
    assert not WorkerHeartbeat.objects.filter(worker__in=names).exists()
