"""Shared fixtures: the real services, a real S3 server, a real worker, a real callback receiver."""

import io
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from django.conf import settings

from devstack.net import answers

ROOT = Path(__file__).resolve().parent.parent
TESTDATA = ROOT / "tests" / "data" / "photos"
IN_CI = os.environ.get("CI", "").lower() == "true"


# --- Real services ------------------------------------------------------------------------------


def _service_up(name: str) -> bool:
    if name == "postgres":
        return settings.DATABASES["default"]["ENGINE"].endswith("postgresql")
    if name == "rabbitmq":
        return answers(settings.CELERY_BROKER_URL)
    if name == "redis":
        return answers(settings.CELERY_RESULT_BACKEND)
    raise ValueError(name)


def require(*names: str) -> None:
    """Skip the test when a service is missing; in CI (CI=true), fail it instead."""
    missing = [name for name in names if not _service_up(name)]
    if missing:
        message = f"needs {', '.join(missing)} running (see README: Tests)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


def pytest_sessionstart(session):
    if IN_CI:
        missing = [name for name in ("postgres", "rabbitmq", "redis") if not _service_up(name)]
        if missing:
            raise pytest.UsageError(f"CI=true but these services do not answer: {', '.join(missing)}")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A SeaweedFS S3 server for this run, with the test bucket created."""
    from devstack.seaweed import SeaweedS3
    from storage import s3 as storage

    host, _, port = settings.S3_ENDPOINT.rpartition(":")
    server = SeaweedS3(
        data_dir=tmp_path_factory.mktemp("s3"),
        access_key=settings.S3_ACCESS_KEY,
        secret_key=settings.S3_SECRET_KEY,
        s3_port=int(port),
        base_port=int(os.environ["FDA_S3_BASE_PORT"]),
        host=host,
    )
    server.start()
    storage.reset_clients()
    storage.storage_ensure_bucket()
    yield server
    server.stop()


@pytest.fixture
def s3(s3_server):
    """The S3 server, with the bucket emptied after the test."""
    from storage import s3 as storage

    yield s3_server
    for key in storage.storage_list():
        storage.storage_delete(key=key)


# --- Test data ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def manifest() -> list[dict]:
    return json.loads((TESTDATA / "manifest.json").read_text())


def photo_bytes(name: str) -> bytes:
    return (TESTDATA / name).read_bytes()


# --- Callback receiver --------------------------------------------------------------------------


class CallbackReceiver:
    """A real HTTP server on loopback that records every POST and answers with scripted codes."""

    def __init__(self, port: int = 0) -> None:
        self.received: queue.Queue[dict] = queue.Queue()
        self.script: list[int] = []  # status codes to answer, in order; 200 once exhausted
        self.delay = 0.0  # seconds to wait before answering (a slow receiver)
        self.headers: dict[str, str] = {}  # extra response headers
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length)
                time.sleep(receiver.delay)
                status = receiver.script.pop(0) if receiver.script else 200
                receiver.received.put({"path": self.path, "headers": dict(self.headers), "body": body, "answered": status})
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", "/redirected")
                for name, value in receiver.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"ok" if status < 300 else b"nope")

            # Any method is recorded (a followed redirect would come back as a GET).
            do_GET = do_PUT = do_POST

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def wait(self, count: int, timeout: float = 180) -> list[dict]:
        """The next ``count`` requests, failing if they do not all come within ``timeout``."""
        got, deadline = [], time.monotonic() + timeout
        while len(got) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"received {len(got)} of {count} callbacks within {timeout}s")
            try:
                got.append(self.received.get(timeout=min(remaining, 1)))
            except queue.Empty:
                continue
        return got

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = CallbackReceiver()
    yield r
    r.close()


# --- A real Celery worker -----------------------------------------------------------------------


class WorkerProcess:
    """``celery worker`` as a subprocess on this run's queues and test database."""

    def __init__(self, log_path: Path, env: dict[str, str], concurrency: int = 1, queues: str = "detect,deliver") -> None:
        self.log_path = log_path
        self.env = env
        self.concurrency = concurrency
        # Queue names by role: "detect", "deliver" or both, mapped to this run's queues.
        self.queues = queues
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> "WorkerProcess":
        # A detect worker consumes the batch items' queue too, as the Procfile's does.
        names = {"detect": f"{settings.CELERY_QUEUE_DETECT},{settings.CELERY_QUEUE_DETECT_BATCH}", "deliver": settings.CELERY_QUEUE_DELIVER}
        queues = ",".join(names[role] for role in self.queues.split(","))
        self.log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "face_detect_api",
                "worker",
                "--loglevel",
                "INFO",
                "-Q",
                queues,
                "--concurrency",
                str(self.concurrency),
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-n",
                f"test-{os.environ['FDA_RUN']}-{time.monotonic_ns()}@%h",
            ],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"worker exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            log = self.log()
            if " ready." in log and len(re.findall(r"worker process \d+ ready", log)) >= self.concurrency:
                return self
            time.sleep(0.25)
        self.stop()
        pytest.fail(f"worker not ready in {timeout}s:\n{self.log()[-3000:]}")

    def log(self) -> str:
        with open(self.log_path, "rb") as fh:
            fh.seek(self.log_offset)
            return fh.read().decode("utf-8", "replace")

    def child_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True).stdout
        return [int(pid) for pid in out.split()]

    def kill(self) -> None:
        """SIGKILL the whole worker, children included: no goodbye to the broker."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@pytest.fixture(scope="session")
def worker_env(django_db_setup, django_db_blocker, s3_server) -> dict[str, str]:
    """The environment of a worker that shares this run's database, queues and S3 server."""
    require("postgres", "rabbitmq", "redis")
    with django_db_blocker.unblock():
        from django.db import connection

        db = connection.settings_dict
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="tests.settings",
        DATABASE_URL=f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        DETECTOR_TORCH_THREADS="1",
        PYTHONUNBUFFERED="1",
        # Tests read the worker's log as JSON lines, whatever the developer's shell prefers.
        LOG_FORMAT="json",
    )
    return env


@pytest.fixture(scope="module")
def worker(worker_env, tmp_path_factory):
    """One real worker (MTCNN, concurrency 1) for a test module. Module-scoped, so that modules
    which start and kill their own workers have the queues to themselves."""
    process = WorkerProcess(tmp_path_factory.mktemp("worker") / "worker.log", worker_env).start()
    yield process
    process.stop()


@pytest.fixture(scope="session", autouse=True)
def _test_queues_deleted_at_the_end():
    yield
    if _service_up("rabbitmq"):
        _delete_test_queues()


def _delete_test_queues() -> None:
    from face_detect_api.celery import app

    with app.connection_for_write() as conn:
        channel = conn.default_channel
        queues = (
            settings.CELERY_QUEUE_DETECT,
            settings.CELERY_QUEUE_DELIVER,
            settings.CELERY_QUEUE_DEAD,
            settings.CELERY_QUEUE_DETECT_BATCH,
        )
        for name in queues:
            # Each queue has an exchange of its own name (settings: CELERY_TASK_QUEUES).
            for delete in (channel.queue_delete, channel.exchange_delete):
                try:
                    delete(name)
                except Exception:
                    pass


# --- The model registry ---------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _detector_registry(request):
    """Every test with database access starts with the shipped versions registered and
    mtcnn@1.0.0 active, as `manage.py detector_register --bootstrap` leaves a fresh database with
    the suite's DETECTOR_MODEL (tests/settings.py) (transactional tests empty the tables after
    each test, so this runs per test)."""
    marker = request.node.get_closest_marker("django_db")
    if marker is None:
        return
    request.getfixturevalue("transactional_db" if marker.kwargs.get("transaction") else "db")
    from registry.services import detector_bootstrap

    detector_bootstrap()


@pytest.fixture
def stub_detector():
    """The fast stub detector, registered and active (unit tests only; never end to end)."""
    from registry.models import DetectorVersion
    from registry.services import detector_version_activate

    DetectorVersion.objects.get_or_create(
        id="stub@0.0.0",
        defaults=dict(name="stub", version="0.0.0", implementation="stub", weights=[], settings={}, settings_hash=""),
    )
    return detector_version_activate(version_id="stub@0.0.0")


# --- Helpers ------------------------------------------------------------------------------------


@pytest.fixture
def api_key() -> str:
    """A fresh client's API key (tests that use it carry a django_db mark)."""
    from clients.services import api_key_create

    return api_key_create(client_name=f"client-{time.monotonic_ns()}")[1]


@pytest.fixture
def api_client(api_key):
    """An API client authenticated with its own key, as `X-API-Key`."""
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_X_API_KEY=api_key)
    return client


@pytest.fixture
def anonymous_client():
    from rest_framework.test import APIClient

    return APIClient()


def upload(client, data: bytes, *, name: str = "photo.png", **fields):
    """POST an image to the API as multipart, the way a client would."""
    payload = {"image": io.BytesIO(data), **fields}
    payload["image"].name = name
    return client.post("/api/v1/images/", payload, format="multipart")


def at_once(work, args_list, *, timeout: float = 30) -> tuple[list, list[Exception]]:
    """Run ``work(*args)`` for each ``args`` on a thread of its own, all released together by a
    barrier (the races the database must settle), each closing its database connection after.
    Returns what the calls returned (in the order they finished) and what they raised."""
    from django.db import connection

    barrier, results, errors = threading.Barrier(len(args_list)), [], []

    def run(args):
        try:
            barrier.wait(timeout=timeout)
            results.append(work(*args))
        except Exception as exc:  # noqa: BLE001 - returned to the test
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(args,)) for args in args_list]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=2 * timeout)
    return results, errors


def job_settled(image) -> bool:
    """Detection finished, the annotated photo stored (if completed) and the callback no longer
    pending."""
    from callbacks.models import DeliveryStatus

    if not image.is_terminal or (image.status == "completed" and not image.annotated_key):
        return False
    if not image.callback_url:
        return True
    latest = image.latest_delivery
    return latest is not None and latest.status != DeliveryStatus.PENDING


def wait_terminal(image_id, timeout: float = 180):
    """Poll the job until it is settled (see job_settled)."""
    from jobs.models import Image

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        image = Image.objects.get(id=image_id)
        if job_settled(image):
            return image
        time.sleep(0.2)
    pytest.fail(f"job {image_id} not finished within {timeout}s")


def store_status(key: str) -> int:
    """The HTTP status the S3 server itself answers to a GET of ``key`` in the run's bucket (a
    presigned URL: no client library between the test and the server)."""
    import requests

    from storage import s3 as storage

    url = storage.client().presigned_get_object(settings.S3_BUCKET, key)
    return requests.get(url, timeout=10).status_code


@pytest.fixture(autouse=True)
def _readyz_storage_result_forgotten():
    """/readyz caches its storage answer per process: each test asks the store afresh."""
    from api.health import storage_check_forget

    storage_check_forget()


# --- Photos by URL ------------------------------------------------------------------------------


@pytest.fixture
def photoserver():
    """A real HTTP server on 127.0.0.1 serving the test photos and awkward answers
    (tests/photoserver.py); it records the paths asked."""
    from tests.photoserver import PhotoServer

    server = PhotoServer(slow_seconds=10).start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _state_cache_forgotten():
    """Each test starts with empty per-process caches of keys, versions and rollouts
    (core.statecache): a transactional test's tables are emptied after it without a signal."""
    from core import statecache

    statecache.reset()
    yield
    statecache.reset()
