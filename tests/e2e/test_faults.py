"""Fault tests on real services: workers killed, receivers failing, S3 and RabbitMQ going away.
Nothing may be lost and nothing applied twice. Each test starts the workers it needs."""

import io
import json
import shutil
import socket
import subprocess
import time

import pytest
from django.conf import settings
from PIL import Image as PILImage

from callbacks.models import CallbackDelivery
from callbacks.signing import verify_webhook
from jobs.models import Face, Image
from tests.conftest import IN_CI, TESTDATA, WorkerProcess, photo_bytes, upload, wait_terminal

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.fixture
def start_worker(worker_env, tmp_path):
    """Start workers on demand; all are stopped after the test."""
    started = []

    def start(**kwargs) -> WorkerProcess:
        worker = WorkerProcess(tmp_path / f"worker-{len(started)}.log", worker_env, **kwargs).start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


def tiled(n: int) -> bytes:
    """n x n copies of the astronaut: n*n faces, and a detection that takes a while."""
    tile = PILImage.open(TESTDATA / "astronaut_1face.png").convert("RGB")
    canvas = PILImage.new("RGB", (512 * n, 512 * n))
    for i in range(n):
        for j in range(n):
            canvas.paste(tile, (512 * i, 512 * j))
    out = io.BytesIO()
    canvas.save(out, "PNG")
    return out.getvalue()


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def test_a_worker_killed_mid_detection_leaves_the_job_to_be_finished(api_client, s3, start_worker, receiver):
    """SIGKILL the worker while it detects; a restarted worker finishes the job, faces once."""
    worker = start_worker()
    image_id = upload(api_client, tiled(4), request_id="sigkill", callback_url=receiver.url()).json()["id"]
    wait_for(lambda: Image.objects.get(id=image_id).status == "processing", 60, "detection to start")
    worker.kill()
    job = Image.objects.get(id=image_id)
    assert job.status == "processing" and job.face_count is None  # killed before it finished

    start_worker()
    job = wait_terminal(image_id)
    assert job.status == "completed" and job.attempts == 2
    assert job.face_count == 16 == Face.objects.filter(image=job).count()
    assert sorted(Face.objects.filter(image=job).values_list("index", flat=True)) == list(range(16))
    (callback,) = receiver.wait(1)
    assert json.loads(callback["body"])["face_count"] == 16


def test_a_failing_receiver_gets_the_same_signed_message_until_it_accepts(api_client, s3, start_worker, receiver):
    """500, 500, then 200: delivered on the third attempt, one webhook-id, every signature valid."""
    start_worker()
    receiver.script = [500, 500, 200]
    image_id = upload(api_client, photo_bytes("grace_hopper_1face.jpg"), request_id="flaky-receiver", callback_url=receiver.url()).json()[
        "id"
    ]
    requests = receiver.wait(3)
    wait_terminal(image_id)
    outbox = CallbackDelivery.objects.get(image_id=image_id)
    assert outbox.status == "delivered"
    assert [a.status_code for a in outbox.attempts.all()] == [500, 500, 200]
    assert {r["headers"]["webhook-id"] for r in requests} == {outbox.webhook_id}
    for r in requests:
        verify_webhook(settings.CALLBACK_SIGNING_SECRET, r["headers"], r["body"])


def test_a_receiver_that_is_down_fails_then_redeliver_succeeds(api_client, s3, start_worker):
    """Retried on schedule, then failed; once the receiver is up, redeliver delivers."""
    start_worker()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/hook"
    image_id = upload(api_client, photo_bytes("coffee.png"), request_id="down-receiver", callback_url=url).json()["id"]
    wait_terminal(image_id)
    first = CallbackDelivery.objects.get(image_id=image_id)
    attempts = list(first.attempts.all())
    assert first.status == "failed" and len(attempts) == len(settings.CALLBACK_RETRY_DELAYS) + 1
    for before, after, delay in zip(attempts, attempts[1:], settings.CALLBACK_RETRY_DELAYS):
        assert (after.started_at - before.started_at).total_seconds() >= delay * 0.9

    from tests.conftest import CallbackReceiver

    receiver = CallbackReceiver(port=port)
    try:
        assert api_client.post(f"/api/v1/images/{image_id}/redeliver/").status_code == 202
        (request,) = receiver.wait(1, timeout=60)
        wait_for(lambda: CallbackDelivery.objects.filter(image_id=image_id, status="delivered").exists(), 30, "delivery")
        assert api_client.get(f"/api/v1/images/{image_id}/").json()["callback"]["status"] == "delivered"
    finally:
        receiver.close()


def test_storage_down_while_a_job_runs_is_retried_until_it_returns(api_client, s3, start_worker, receiver):
    """S3 stops after the upload; the worker retries with backoff; S3 returns; the job completes."""
    image_id = upload(api_client, photo_bytes("astronaut_1face.png"), request_id="s3-down", callback_url=receiver.url()).json()["id"]
    s3.stop()
    try:
        worker = start_worker()
        wait_for(lambda: worker.log().count("transient error, retry") >= 2, 60, "the worker to retry", interval=0.2)
        # Between retries it is queued, during one processing: never failed while retries remain.
        assert Image.objects.get(id=image_id).status in ("queued", "processing")
    finally:
        s3.start()
    job = wait_terminal(image_id)
    assert job.status == "completed" and job.face_count == 1 and job.annotated_key


def test_rabbitmq_restarted_while_jobs_are_queued_loses_nothing(api_client, s3, start_worker, receiver):
    """Jobs wait in durable queues through a broker restart, then all complete."""
    if not shutil.which("rabbitmqctl"):
        if IN_CI:
            pytest.fail("rabbitmqctl is needed to restart RabbitMQ")
        pytest.skip("rabbitmqctl not available")
    ids = [
        upload(api_client, photo_bytes(name), request_id=f"broker-restart-{name}", callback_url=receiver.url()).json()["id"]
        for name in ("astronaut_1face.png", "coffee.png", "grace_hopper_1face.jpg")
    ]
    subprocess.run(["rabbitmqctl", "stop_app"], check=True, capture_output=True, timeout=120)
    subprocess.run(["rabbitmqctl", "start_app"], check=True, capture_output=True, timeout=120)
    subprocess.run(["rabbitmqctl", "await_startup"], check=True, capture_output=True, timeout=120)
    start_worker()
    for image_id in ids:
        assert wait_terminal(image_id).status == "completed"
    assert len(receiver.wait(3)) == 3


def test_a_slow_receiver_does_not_hold_up_detection(api_client, s3, start_worker, receiver):
    """With detection and delivery on separate workers, every job is detected while the slow
    receiver still holds the first callback."""
    start_worker(queues="detect")
    start_worker(queues="deliver")
    receiver.delay = 4
    ids = [
        upload(
            api_client, photo_bytes("coffee.png" if i % 2 else "chelsea_cat.png"), request_id=f"slow-{i}", callback_url=receiver.url()
        ).json()["id"]
        for i in range(3)
    ]
    wait_for(lambda: Image.objects.filter(id__in=ids, status="completed").count() == 3, 60, "detection of all jobs")
    assert CallbackDelivery.objects.filter(image_id__in=ids, status="delivered").count() <= 1
    for image_id in ids:
        wait_terminal(image_id, timeout=120)
