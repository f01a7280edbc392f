"""Structured logs: JSON lines with the request and the job in hand, and the request id that the
API answers with, stores on the job and hands to the tasks (in-process; the end-to-end test with a
real worker is tests/e2e/test_request_tracing.py)."""

import datetime as dt
import io
import json
import logging
import os
import re
import uuid

import pytest
from celery import shared_task
from kombu import Producer

from core.logging import (
    ContextFilter,
    JsonFormatter,
    TextFormatter,
    formatter,
    log_context,
    log_context_add,
    log_context_fields,
    log_context_get,
    logging_config,
)
from jobs.models import Image
from tests.conftest import photo_bytes, require, upload

HEX_ID = re.compile(r"[0-9a-f]{32}")


class JsonLines:
    """A handler on a logger, the way settings.LOGGING sets the root's (JSON, the context
    filter), whose lines the test reads back parsed."""

    def __init__(self, logger: logging.Logger, fmt: logging.Formatter | None = None) -> None:
        self.stream = io.StringIO()
        self.handler = logging.StreamHandler(self.stream)
        self.handler.setFormatter(fmt or JsonFormatter())
        self.handler.addFilter(ContextFilter())
        self.logger = logger
        self.level = logger.level
        logger.addHandler(self.handler)
        logger.setLevel(logging.DEBUG)

    def text(self) -> str:
        return self.stream.getvalue()

    def lines(self) -> list[dict]:
        return [json.loads(line) for line in self.text().splitlines()]

    def close(self) -> None:
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.level)


@pytest.fixture
def json_lines():
    """Every line logged anywhere during the test, parsed (a handler on the root logger)."""
    lines = JsonLines(logging.getLogger())
    yield lines
    lines.close()


def probe_logger() -> logging.Logger:
    logger = logging.getLogger(f"tests.observability.{uuid.uuid4().hex}")
    logger.propagate = False
    return logger


# --- The formatter and the context -----------------------------------------------------------------


def test_a_json_line_has_the_keys_and_the_context():
    """One JSON object per line: time (UTC), level, logger, process, message and the context."""
    logger = probe_logger()
    out = JsonLines(logger)
    with log_context(http_request_id="req-1", job_id="job-1", request_id="client-1", model_version="mtcnn@1.0.0"):
        logger.info("job %s: %d faces\nsecond line", "job-1", 2)
    out.close()
    [line] = out.text().splitlines()  # the message's line break stays inside the one line
    record = json.loads(line)
    assert record["level"] == "INFO" and record["logger"] == logger.name and record["process"] == os.getpid()
    assert record["message"] == "job job-1: 2 faces\nsecond line"
    assert dt.datetime.fromisoformat(record["time"]).utcoffset() == dt.timedelta(0)
    assert {k: record[k] for k in ("http_request_id", "job_id", "request_id", "model_version")} == {
        "http_request_id": "req-1",
        "job_id": "job-1",
        "request_id": "client-1",
        "model_version": "mtcnn@1.0.0",
    }
    assert "exc_info" not in record


def test_a_json_line_carries_the_traceback_as_exc_info():
    """An exception's traceback is the text of exc_info, inside the one JSON line."""
    logger = probe_logger()
    out = JsonLines(logger)
    try:
        raise RuntimeError("boom at the detector")
    except RuntimeError:
        logger.exception("job crashed")
    out.close()
    [record] = out.lines()
    assert record["level"] == "ERROR" and record["message"] == "job crashed"
    assert record["exc_info"].startswith("Traceback") and "RuntimeError: boom at the detector" in record["exc_info"]


def test_extra_fields_are_written_and_win_over_the_context():
    """Fields of one call (extra=) appear as keys and take precedence over the context's."""
    logger = probe_logger()
    out = JsonLines(logger)
    with log_context(path="/from-context", job_id="j"):
        logger.info("access", extra={"path": "/from-extra", "status": 404, "id": uuid.UUID(int=1)})
    out.close()
    [record] = out.lines()
    assert record["path"] == "/from-extra" and record["status"] == 404 and record["job_id"] == "j"
    assert record["id"] == str(uuid.UUID(int=1))


def test_the_text_format_is_for_people_with_the_fields_at_the_end():
    """LOG_FORMAT=text: a plain line, the context as key=value after the message."""
    logger = probe_logger()
    out = JsonLines(logger, TextFormatter())
    with log_context(http_request_id="req-2", job_id="job-2"):
        logger.warning("slow")
    out.close()
    line = out.text().strip()
    assert " WARNING " in line and f" {logger.name} [{os.getpid()}] slow " in line
    assert line.endswith("http_request_id=req-2 job_id=job-2")


def test_an_unknown_log_format_is_refused_at_start_up():
    """A typo in LOG_FORMAT fails when the settings load, not at the first line."""
    with pytest.raises(ValueError, match="LOG_FORMAT"):
        logging_config(fmt="jsonl", level="INFO")
    assert isinstance(formatter("json"), JsonFormatter) and isinstance(formatter("text"), TextFormatter)


def test_the_settings_default_to_json_lines(settings):
    """env.env makes json the default; LOGGING is one root handler in LOG_FORMAT with the context."""
    assert re.search(r"^LOG_FORMAT=json$", (settings.BASE_DIR / "env.env").read_text(), re.M)
    assert settings.LOGGING == logging_config(fmt=settings.LOG_FORMAT, level=settings.LOG_LEVEL)
    config = logging_config(fmt="json", level="INFO")
    handler = config["handlers"]["console"]
    assert config["root"]["handlers"] == ["console"] and handler["filters"] == ["context"]
    assert config["formatters"][handler["formatter"]]["()"] == "core.logging.JsonFormatter"


def test_a_context_ends_with_its_block_and_nests():
    """log_context adds fields for its block only; an inner block adds to the outer one."""
    with log_context(http_request_id="outer"):
        with log_context(job_id="j1"):
            assert log_context_fields() == {"http_request_id": "outer", "job_id": "j1"}
        assert log_context_fields() == {"http_request_id": "outer"}
    assert log_context_fields() == {}


def test_adding_fields_lasts_until_the_scope_closes_and_never_outside_one():
    """log_context_add adds to the open scope (gone when it closes); with no scope it does nothing."""
    log_context_add(job_id="leak")
    assert log_context_fields() == {}
    with log_context(http_request_id="from-header"):
        log_context_add(keep_existing=True, http_request_id="from-row", job_id="j")
        assert log_context_fields() == {"http_request_id": "from-header", "job_id": "j"}
    assert log_context_get("job_id") is None


def test_a_context_field_may_not_take_a_log_record_name():
    """Fields named like LogRecord attributes (process, message, ...) are refused."""
    with pytest.raises(ValueError, match="process"):
        with log_context(process="x"):
            pass


# --- The middleware: X-Request-ID and the access log ------------------------------------------------


@pytest.fixture
def access_lines():
    lines = JsonLines(logging.getLogger("access"))
    yield lines
    lines.close()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "path, status",
    [("/healthz", 200), ("/api/v1/images/", 401), ("/api/v1/nowhere/", 404), ("/admin/", 302), ("/admin/login/", 200)],
)
def test_a_clients_request_id_comes_back_on_every_answer(anonymous_client, access_lines, path, status):
    """The client's X-Request-ID is echoed on 2xx, 4xx, 404 and the admin, and logged once."""
    sent = f"client-{uuid.uuid4()}"
    response = anonymous_client.get(path, HTTP_X_REQUEST_ID=sent)
    assert response.status_code == status
    assert response["X-Request-ID"] == sent
    [line] = access_lines.lines()
    assert line["logger"] == "access" and line["http_request_id"] == sent
    assert (line["method"], line["path"], line["status"]) == ("GET", path, status)
    assert line["duration_ms"] >= 0 and line["client_ip"] == "127.0.0.1"


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/healthz", "/api/v1/images/", "/api/v1/nowhere/", "/admin/"])
def test_a_request_without_an_id_gets_one(anonymous_client, access_lines, path):
    """No X-Request-ID: a new one (32 hex digits), on the answer and in the access line."""
    response = anonymous_client.get(path)
    assert HEX_ID.fullmatch(response["X-Request-ID"])
    assert access_lines.lines()[0]["http_request_id"] == response["X-Request-ID"]
    assert anonymous_client.get(path)["X-Request-ID"] != response["X-Request-ID"]


@pytest.mark.parametrize("sent", ["x" * 129, "line\nbreak", "tab\there", " padded ", "caf\u00e9", ""])
def test_an_unusable_request_id_is_replaced(client, sent):
    """Too long, control characters, spaces at the ends, non-ASCII, empty: replaced, not kept."""
    response = client.get("/healthz", HTTP_X_REQUEST_ID=sent)
    assert HEX_ID.fullmatch(response["X-Request-ID"])


def test_a_request_id_of_128_printable_characters_is_kept(client):
    """The longest accepted id, with inner spaces and punctuation, comes back as it was sent."""
    sent = ("a-Z_0.9:/ =+" * 11)[:128]
    assert client.get("/healthz", HTTP_X_REQUEST_ID=sent)["X-Request-ID"] == sent


@pytest.mark.django_db
def test_djangos_own_error_line_carries_the_request_id(anonymous_client, json_lines):
    """ "Not Found: /x" (django.request) is written inside the request's context, once."""
    response = anonymous_client.get("/api/v1/nowhere/", HTTP_X_REQUEST_ID="trace-404")
    assert response.status_code == 404
    not_found = [line for line in json_lines.lines() if line["logger"] == "django.request"]
    assert len(not_found) == 1 and not_found[0]["http_request_id"] == "trace-404"


# --- The job: stored on the row, sent as a header, set in each task's context ----------------------


@pytest.fixture
def traced_job(api_key, s3, monkeypatch, stub_detector):
    """A job uploaded with X-Request-ID "trace-row", its chain not published (run by hand)."""
    from rest_framework.test import APIClient

    monkeypatch.setattr("jobs.services.submission.image_job_enqueue", lambda *, image_id: None)
    client = APIClient()
    client.credentials(HTTP_X_API_KEY=api_key, HTTP_X_REQUEST_ID="trace-row")
    response = upload(client, photo_bytes("astronaut_1face.png"), request_id="client-trace", cohort="beta")
    assert response.status_code == 202 and response["X-Request-ID"] == "trace-row"
    return Image.objects.get(id=response.json()["id"])


@pytest.mark.django_db
def test_the_job_row_keeps_the_request_id_that_made_it(traced_job):
    """The upload's X-Request-ID is stored on the job."""
    assert traced_job.http_request_id == "trace-row"


@pytest.mark.django_db
def test_a_task_without_a_header_takes_the_id_and_the_job_from_the_row(traced_job, json_lines):
    """detect_faces (no header): every line about the job carries the row's id and the job's fields."""
    from workers.tasks import detect_faces

    assert detect_faces.apply(args=[str(traced_job.id)]).successful()
    traced_job.refresh_from_db()
    about = [line for line in json_lines.lines() if line.get("job_id") == str(traced_job.id)]
    assert any("faces" in line["message"] for line in about), json_lines.text()
    for line in about:
        assert line["http_request_id"] == "trace-row"
        assert (line["request_id"], line["cohort"], line["task"]) == ("client-trace", "beta", "workers.tasks.detect_faces")
        assert line["model_version"].startswith("stub@0.0.0")
    assert log_context_fields() == {}


@pytest.mark.django_db
def test_a_tasks_header_wins_over_the_row(traced_job, json_lines):
    """A task published with an http_request_id header logs that one (a redelivery asked for by
    an operator's request, say), with the job's other fields from the row."""
    from workers.tasks import detect_faces

    assert detect_faces.apply(args=[str(traced_job.id)], headers={"http_request_id": "trace-header"}).successful()
    about = [line for line in json_lines.lines() if line.get("job_id") == str(traced_job.id)]
    assert about and {line["http_request_id"] for line in about} == {"trace-header"}


@shared_task(name="tests.observability.context_probe")
def context_probe(job_id: str | None = None) -> dict:
    """Adds a job to its log context when given one, and returns the context it ran with."""
    if job_id:
        log_context_add(job_id=job_id)
    return log_context_fields()


def test_two_tasks_in_a_row_do_not_share_a_context():
    """The second task sees neither the first's header nor the job the first one added."""
    first = context_probe.apply(kwargs={"job_id": "job-a"}, headers={"http_request_id": "req-a"}).get()
    second = context_probe.apply().get()
    assert first["http_request_id"] == "req-a" and first["job_id"] == "job-a"
    assert first["task"] == second["task"] == "tests.observability.context_probe"
    assert "http_request_id" not in second and "job_id" not in second
    assert second["task_id"] != first["task_id"]
    assert log_context_fields() == {}


@pytest.fixture
def published(monkeypatch):
    """The headers of every message published during the test (published nowhere)."""
    require("rabbitmq")
    sent: list[dict] = []

    def publish(self, body, *args, headers=None, **kwargs):
        sent.append({"task": (headers or {}).get("task"), "headers": dict(headers or {})})

    monkeypatch.setattr(Producer, "publish", publish)
    return sent


def test_the_detect_chain_is_published_with_the_request_id(published):
    """jobs.services publishes detect -> deliver with the request's id as a header."""
    from jobs import services

    with log_context(http_request_id="trace-publish"):
        services.submission._publish_chain(uuid.uuid4())
    assert [m["task"] for m in published] == [services.DETECT_TASK]
    assert published[0]["headers"]["http_request_id"] == "trace-publish"


def test_a_callback_task_is_sent_with_the_request_id_and_a_header_of_its_own_is_kept(published):
    """send_task carries the context's id; one the publisher set itself is not overwritten."""
    from celery import current_app

    from callbacks.services import DELIVER_CALLBACK_TASK

    with log_context(http_request_id="trace-callback"):
        current_app.send_task(DELIVER_CALLBACK_TASK, args=(1,))
        current_app.send_task(DELIVER_CALLBACK_TASK, args=(2,), headers={"http_request_id": "own"})
    current_app.send_task(DELIVER_CALLBACK_TASK, args=(3,))
    assert [m["headers"].get("http_request_id") for m in published] == ["trace-callback", "own", None]
