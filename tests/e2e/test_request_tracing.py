"""One request id through the whole pipeline, on real services and a real worker (MTCNN): the
client's X-Request-ID comes back on the answer, is stored on the job, rides the Celery messages,
and is on every JSON log line the worker writes about the job, the callback's included."""

import io
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import pytest
import yaml

from tests.conftest import ROOT, photo_bytes, wait_terminal

pytestmark = [pytest.mark.django_db(transaction=True)]

# Log records in a format other than ours (Celery's default, logging's basicConfig): a line of
# this shape means some logger bypassed core.logging's formatter.
OTHER_LOG_FORMATS = re.compile(r"^\[\d{4}-\d\d-\d\d [^\]]*: (DEBUG|INFO|WARNING|ERROR|CRITICAL)/|^(DEBUG|INFO|WARNING|ERROR|CRITICAL):")


def worker_lines(worker) -> list[dict]:
    """The worker's log, parsed.

    Besides the JSON log lines, a worker prints a few things without logging at start-up: Celery's
    banner (a print to stdout, which can come after the first log line: Python warnings raised
    while Celery starts are log records too). Those are skipped, but none may look like a log
    record of another format: that would be a logger bypassing core.logging's formatter."""
    parsed = []
    for line in worker.log().splitlines():
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            value = None
        if isinstance(value, dict):
            parsed.append(value)
        else:
            assert not OTHER_LOG_FORMATS.match(line), f"a log line not in JSON: {line}"
    for record in parsed:
        assert {"time", "level", "logger", "process", "message"} <= set(record), record
    return parsed


def wait_for_line(worker, what: str, predicate, timeout: float = 60) -> list[dict]:
    """The worker's parsed log once a line matches (the job can be settled in the database a
    moment before the task's last lines are written)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = worker_lines(worker)
        if any(predicate(line) for line in lines):
            return lines
        if time.monotonic() > deadline:
            pytest.fail(f"no worker log line {what} within {timeout}s:\n{worker.log()[-4000:]}")
        time.sleep(0.2)


def task_succeeded(task: str, job_id: str):
    return lambda line: line.get("job_id") == job_id and line.get("task") == task and "succeeded" in line["message"]


def callback_logged(task: str, job_id: str):
    """The line of the callback's try, logged by the sender in the context of the task that
    handed it over (after that task ended: the POST is not made inside the task)."""
    return lambda line: line.get("job_id") == job_id and line.get("task") == task and line["logger"] == "callbacks.services"


def submit(api_client, receiver, http_request_id: str):
    photo = io.BytesIO(photo_bytes("astronaut_1face.png"))
    photo.name = "astronaut_1face.png"
    return api_client.post(
        "/api/v1/images/",
        {"image": photo, "request_id": f"trace-{http_request_id}", "callback_url": receiver.url()},
        format="multipart",
        HTTP_X_REQUEST_ID=http_request_id,
    )


def test_the_request_id_follows_the_job_into_the_worker_and_the_callback(api_client, worker, receiver, s3):
    """Every worker line about the job, in detection and in delivery (the callback's line
    included), is JSON with the upload's X-Request-ID, the client's request_id and the version."""
    sent = f"test-{uuid.uuid4()}"
    response = submit(api_client, receiver, sent)
    assert response.status_code == 202, response.content
    assert response["X-Request-ID"] == sent
    job_id = response.json()["id"]
    receiver.wait(1)
    job = wait_terminal(job_id)
    assert job.status == "completed" and job.http_request_id == sent

    # The detect task sent the callback's first try itself (DETECT_SENDS_CALLBACKS): no delivery
    # task ran for the job, and the try's line carries the detect task's context.
    lines = wait_for_line(worker, "for the detection's end", task_succeeded("workers.tasks.detect_faces", job_id))
    lines = wait_for_line(worker, "for the callback's line", callback_logged("workers.tasks.detect_faces", job_id))
    about = [line for line in lines if line.get("job_id") == job_id or job_id in line["message"]]
    for line in about:
        assert line["http_request_id"] == sent, line
        assert (line["job_id"], line["request_id"], line["model_version"]) == (job_id, f"trace-{sent}", job.model_version), line
    by_task = {
        task: [line for line in about if line.get("task") == task]
        for task in ("workers.tasks.detect_faces", "workers.tasks.deliver_result")
    }
    assert any(" kept) with " in line["message"] for line in by_task["workers.tasks.detect_faces"]), about
    callback_lines = [line for line in by_task["workers.tasks.detect_faces"] if line["logger"] == "callbacks.services"]
    assert callback_lines and "-> delivered" in callback_lines[0]["message"], about
    assert by_task["workers.tasks.deliver_result"] == [], about


def test_a_redelivery_carries_the_id_of_the_request_that_asked_for_it(api_client, worker, receiver, s3):
    """POST redeliver with its own X-Request-ID: the deliver_callback task gets that id by its
    message header (the job's row still holds the upload's), and logs it with the job's fields."""
    uploaded = f"test-{uuid.uuid4()}"
    job_id = submit(api_client, receiver, uploaded).json()["id"]
    receiver.wait(1)
    wait_terminal(job_id)

    asked = f"test-redeliver-{uuid.uuid4()}"
    response = api_client.post(f"/api/v1/images/{job_id}/redeliver/", HTTP_X_REQUEST_ID=asked)
    assert response.status_code == 202, response.content
    assert response["X-Request-ID"] == asked
    receiver.wait(1)

    lines = wait_for_line(worker, "for the redelivery's end", task_succeeded("workers.tasks.deliver_callback", job_id))
    lines = wait_for_line(worker, "for the callback's line", callback_logged("workers.tasks.deliver_callback", job_id))
    redelivery = [line for line in lines if line.get("task") == "workers.tasks.deliver_callback" and line.get("job_id") == job_id]
    assert any(line["logger"] == "callbacks.services" and "-> delivered" in line["message"] for line in redelivery), redelivery
    for line in redelivery:
        assert line["http_request_id"] == asked and line["request_id"] == f"trace-{uploaded}" and line["delivery_id"], line


# --- The API as deployed: gunicorn's own lines and the access log -------------------------------------

GUNICORN_CONFIG = "python:face_detect_api.gunicorn_conf"


def test_every_deployed_gunicorn_uses_the_logging_config_and_no_access_log_of_its_own():
    """The Procfile, the Dockerfile and compose start gunicorn with gunicorn_conf and without
    --access-logfile: one access line per request, the middleware's."""
    procfile = dict(line.split(": ", 1) for line in (ROOT / "Procfile").read_text().splitlines() if ": " in line)
    dockerfile_cmd = next(line for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("CMD "))
    compose = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())["services"]["web"]["command"]
    commands = {
        "Procfile": shlex.split(procfile["web"]),
        "Dockerfile": json.loads(dockerfile_cmd[len("CMD ") :]),
        # sh -c "... && gunicorn ...": the last command of the string.
        "compose": shlex.split(compose.rpartition("&&")[2].strip().rstrip('"')),
    }
    for where, argv in commands.items():
        assert argv[0] == "gunicorn" and argv[argv.index("--config") + 1] == GUNICORN_CONFIG, where
        assert not any(arg.startswith("--access-log") for arg in argv), where


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str, request_id: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"X-Request-ID": request_id} if request_id else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers["X-Request-ID"]
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["X-Request-ID"]


def test_gunicorn_writes_json_lines_and_one_access_line_per_request(tmp_path):
    """gunicorn as the Procfile runs it: its master's and worker's lines are JSON, and each
    request has exactly one access line (logger "access") with its X-Request-ID."""
    port = _free_port()
    log_path = tmp_path / "gunicorn.log"
    env = {**os.environ, "LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1"}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "face_detect_api.wsgi",
                "--config",
                GUNICORN_CONFIG,
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                "1",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    sent = {f"test-up-{uuid.uuid4()}": "/healthz", f"test-404-{uuid.uuid4()}": "/api/v1/nowhere/"}
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                status, echoed = _get(f"{base}/healthz", "test-ready")
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"gunicorn did not answer:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.2)
        for request_id, path in sent.items():
            status, echoed = _get(base + path, request_id)
            assert echoed == request_id and status == (200 if path == "/healthz" else 404)
        _, made_up = _get(f"{base}/healthz")
        assert re.fullmatch(r"[0-9a-f]{32}", made_up)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)

    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    assert any(line["logger"] == "gunicorn.error" and "Booting worker" in line["message"] for line in lines)
    access = [line for line in lines if line["logger"] == "access"]
    assert sorted(line["http_request_id"] for line in access) == sorted(["test-ready", *sent, made_up])
    for line in access:
        assert set(line) >= {"time", "level", "process", "message", "method", "path", "status", "duration_ms", "client_ip"}
    not_found = [line for line in lines if line["logger"] == "django.request"]
    assert [line["http_request_id"] for line in not_found] == [r for r, path in sent.items() if path != "/healthz"]
