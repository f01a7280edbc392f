"""Soak: submit N jobs while killing detection workers at random; print what became of them.

    python bench/soak.py --jobs 200 --workers 2 --kill-every 3

Uses the PostgreSQL, RabbitMQ and Redis of env.env, its own queues and bucket, and its own S3
server (SeaweedFS) on free ports, so it never touches a running `make up`. Workers are real Celery
workers running MTCNN; a killer SIGKILLs one (the whole process group, as the OOM killer or a
lost machine would) every few seconds and starts a replacement. Callbacks go to an HTTP server on
loopback. Prints accepted, completed, failed and lost (accepted but not finished by the deadline),
plus duplicated faces and callbacks; lost must be 0. Asserts nothing.
"""

import argparse
import io
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as `python bench/soak.py`

from bench.harness import PHOTOS, ROOT, Receiver, delete_queues
from devstack.net import isolated_env
from devstack.runner import load_env
from devstack.seaweed import SeaweedS3

RUN = uuid.uuid4().hex[:8]


def configure(tmp: Path) -> "object":
    """Isolated queues, bucket and S3 server; the rest from env.env."""
    load_env()
    os.environ.update(
        isolated_env("soak"),
        CALLBACK_RETRY_DELAYS="0.5,1,2",
        CALLBACK_ALLOWED_NETWORKS="127.0.0.0/8",
        API_UPLOAD_RATE_LIMIT="",
        JOB_RETRY_BACKOFF_BASE="0.25",
        JOB_RETRY_BACKOFF_MAX="2",
        DETECTOR_TORCH_THREADS="1",
        DJANGO_SETTINGS_MODULE="face_detect_api.settings",
        PYTHONUNBUFFERED="1",
    )
    s3 = SeaweedS3(
        data_dir=tmp / "s3",
        access_key=os.environ["S3_ACCESS_KEY"],
        secret_key=os.environ["S3_SECRET_KEY"],
        s3_port=int(os.environ["FDA_S3_BASE_PORT"]) + 3,
        base_port=int(os.environ["FDA_S3_BASE_PORT"]),
    ).start()
    try:
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        call_command("storage_init", verbosity=0)
        call_command("detector_register", "--bootstrap", verbosity=0)
    except BaseException:
        s3.stop()
        raise
    return s3


class Worker:
    def __init__(self, queue_role: str, log: Path) -> None:
        queue = os.environ["CELERY_QUEUE_DETECT" if queue_role == "detect" else "CELERY_QUEUE_DELIVER"]
        with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "face_detect_api",
                    "worker",
                    "-Q",
                    queue,
                    "--concurrency",
                    "1",
                    "--loglevel",
                    "WARNING",
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                    "-n",
                    f"soak-{RUN}-{uuid.uuid4().hex[:6]}@%h",
                ],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            self.kill()


def tiled_photo(path: Path, n: int) -> bytes:
    from PIL import Image as PILImage

    tile = PILImage.open(path).convert("RGB")
    canvas = PILImage.new("RGB", (tile.width * n, tile.height * n))
    for i in range(n):
        for j in range(n):
            canvas.paste(tile, (tile.width * i, tile.height * j))
    out = io.BytesIO()
    canvas.save(out, "PNG")
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2, help="detection workers kept running")
    parser.add_argument("--kill-every", type=float, default=4.0, help="mean seconds between kills")
    parser.add_argument("--deadline", type=float, default=900.0, help="seconds to wait for all jobs")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    tmp = Path(tempfile.mkdtemp(prefix="soak-"))
    s3 = configure(tmp)
    try:
        run(args, rng, tmp, s3)
    finally:
        s3.stop()


def run(args, rng, tmp: Path, s3) -> None:
    from django.test import Client

    from jobs import services
    from jobs.models import Face, Image

    receiver = Receiver(status=200)

    def callbacks() -> Counter:
        """Job id -> how many callbacks of it arrived so far."""
        return Counter(json.loads(post["body"])["id"] for post in list(receiver.received))

    photos = [(p.name, p.read_bytes()) for p in sorted(PHOTOS.glob("*.[pj][np]g"))]
    # A large photo (16 faces, a couple of seconds to detect) so that kills land mid-detection.
    photos.append(("tiled-4x4.png", tiled_photo(PHOTOS / "astronaut_1face.png", 4)))
    detectors = [Worker("detect", tmp / "workers.log") for _ in range(args.workers)]
    deliverer = Worker("deliver", tmp / "workers.log")
    kills = 0
    stop = threading.Event()

    def killer():
        nonlocal kills
        while not stop.wait(rng.expovariate(1 / args.kill_every)):
            victim = rng.randrange(len(detectors))
            detectors[victim].kill()
            kills += 1
            detectors[victim] = Worker("detect", tmp / "workers.log")

    def sweeper():
        # What Celery beat does in production, every couple of seconds here.
        while not stop.wait(2):
            services.image_jobs_sweep()

    from clients.services import api_key_create

    client = Client(HTTP_HOST="127.0.0.1", HTTP_X_API_KEY=api_key_create(client_name=f"soak-{RUN}")[1])
    started = time.monotonic()
    threads = [threading.Thread(target=killer, daemon=True), threading.Thread(target=sweeper, daemon=True)]
    for thread in threads:
        thread.start()
    ids, refused = [], 0
    for i in range(args.jobs):
        name, data = photos[i % len(photos)]
        upload = io.BytesIO(data)
        upload.name = name
        response = client.post("/api/v1/images/", {"image": upload, "request_id": f"soak-{RUN}-{i}", "callback_url": receiver.url})
        if response.status_code == 202:
            ids.append(response.json()["id"])
        else:
            refused += 1
        time.sleep(rng.uniform(0, 0.2))
    submitted = time.monotonic()

    deadline = time.monotonic() + args.deadline
    while time.monotonic() < deadline:
        pending = Image.objects.filter(id__in=ids).exclude(status__in=["completed", "failed"]).count()
        if pending == 0 and len(callbacks()) >= len(ids):
            break
        time.sleep(1)
    stop.set()
    for thread in threads:  # a replacement worker started mid-stop would outlive the run
        thread.join()
    finished = time.monotonic()

    jobs = Image.objects.filter(id__in=ids)
    completed = jobs.filter(status="completed").count()
    failed = jobs.filter(status="failed").count()
    duplicated = sum(1 for image in jobs.filter(status="completed") if Face.objects.filter(image=image).count() != image.face_count)
    redelivered = jobs.filter(attempts__gt=1).count()
    print(f"jobs submitted: {args.jobs}; accepted: {len(ids)}; refused: {refused}")
    print(f"completed: {completed}; failed: {failed}; lost: {len(ids) - completed - failed}")
    print(f"failure codes: {dict(Counter(jobs.filter(status='failed').values_list('error_code', flat=True)))}")
    print(f"workers killed: {kills}; jobs detected more than once: {redelivered}; jobs with duplicated faces: {duplicated}")
    called = callbacks()
    print(f"callbacks: jobs called back {len(called)} of {len(ids)}; duplicate deliveries {sum(called.values()) - len(called)}")
    print(
        f"time: submitting {submitted - started:.0f} s, until all finished {finished - started:.0f} s; "
        f"{completed / (finished - started):.2f} jobs/s with {args.workers} detection workers"
    )

    for worker in [*detectors, deliverer]:
        worker.stop()
    receiver.close()
    for problem in delete_queues(os.environ["CELERY_BROKER_URL"], [os.environ["CELERY_QUEUE_DETECT"], os.environ["CELERY_QUEUE_DELIVER"]]):
        print(problem)


if __name__ == "__main__":
    main()
