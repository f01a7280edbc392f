"""The detector is loaded once per worker process, never per task, and never in the web process."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, WorkerProcess, photo_bytes, upload, wait_terminal

pytestmark = [pytest.mark.django_db(transaction=True)]


def test_each_worker_process_loads_the_detector_once(api_client, worker_env, s3, tmp_path):
    """Two worker processes, six jobs: exactly one load per process."""
    worker = WorkerProcess(tmp_path / "worker.log", {**worker_env, "DETECTOR_NICE": "5"}, concurrency=2).start()
    try:
        ids = [upload(api_client, photo_bytes("astronaut_1face.png"), request_id=f"load-{i}").json()["id"] for i in range(6)]
        for image_id in ids:
            assert wait_terminal(image_id).face_count == 1
        children = worker.child_pids()
        niceness = {pid: _thread_niceness(pid) for pid in [worker.process.pid, *children]}
        log = worker.log()
    finally:
        worker.stop()
    loads = [line["process"] for line in _json_lines(log) if line["message"].startswith("loaded detector mtcnn@")]
    assert len(children) == 2
    assert sorted(int(pid) for pid in loads) == sorted(children)
    # DETECTOR_NICE: the pool processes that detect, and every thread of theirs (the
    # engine's started after), run that much below the worker's parent, which stays as it was.
    (parent,) = set(niceness[worker.process.pid])
    for pid in children:
        assert set(niceness[pid]) == {min(parent + 5, 19)}, niceness


def test_a_pool_process_past_the_memory_limit_is_replaced_after_its_task(api_client, worker_env, s3, tmp_path):
    """WORKER_MAX_MEMORY_MB, the safety net under the engines' own bounds: with a limit every
    process passes, each job ends completed and the process that ran it is replaced by a new one."""
    worker = WorkerProcess(tmp_path / "worker.log", {**worker_env, "WORKER_MAX_MEMORY_MB": "1"}).start()
    try:
        first = worker.child_pids()
        image_id = upload(api_client, photo_bytes("astronaut_1face.png"), request_id="memory-1").json()["id"]
        assert wait_terminal(image_id).face_count == 1
        second: list[int] = []
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:  # the new process appears once the old one has exited
            now = worker.child_pids()
            if now and not set(now) & set(first):
                second = now
                break
            time.sleep(0.5)
        again = upload(api_client, photo_bytes("astronaut_1face.png"), request_id="memory-2").json()["id"]
        assert wait_terminal(again).face_count == 1
    finally:
        worker.stop()
    assert len(first) == 1 and len(second) == 1 and first != second, (first, second)


def _thread_niceness(pid: int) -> list[int]:
    """The nice value of each thread of a process (Linux keeps one per thread)."""
    values = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        values.append(int(fields[16]))  # field 19 of man 5 proc: nice
    return values


def _json_lines(log: str) -> list[dict]:
    """The worker's log lines (JSON, LOG_FORMAT=json); Celery's banner before them is not."""
    lines = []
    for text in log.splitlines():
        try:
            lines.append(json.loads(text))
        except ValueError:
            continue
    return [line for line in lines if isinstance(line, dict) and "message" in line]


def test_the_web_process_never_imports_torch():
    """Importing the whole web side (urls, views, services, admins, tasks) leaves torch unimported."""
    code = (
        "import django, sys; django.setup();"
        "import face_detect_api.urls, api.views, jobs.services, jobs.admin, callbacks.services, registry.admin, workers.tasks;"
        "from django.test import Client; Client().get('/healthz');"
        "print('torch' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "PATH": "/usr/bin:/bin",
            "FDA_RUN": "x",
            "S3_ENDPOINT": "127.0.0.1:9",
            "S3_ACCESS_KEY": "k",
            "S3_SECRET_KEY": "s",
            "CELERY_QUEUE_DETECT": "d",
            "CELERY_QUEUE_DELIVER": "v",
            "DATABASE_URL": "sqlite:///:memory:",
        },
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False"
