"""The front door (POST /api/v1/images/ -> 202): gunicorn's processes and threads, connections
kept open between requests, and what an upload costs the broker, the result backend and the
database's disk. bench/submit.py measures it; nothing here is timed."""

import datetime as dt
import importlib
import os
import subprocess
import sys
import threading
import time
import uuid

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from jobs import services
from jobs.models import Image
from storage import s3 as storage
from tests.conftest import ROOT, photo_bytes, require, upload

WEB_VARIABLES = ("WEB_WORKERS", "WEB_THREADS", "WEB_KEEPALIVE")


def _gunicorn_conf(monkeypatch, **env: str):
    """face_detect_api.gunicorn_conf as gunicorn would load it with these variables (the others
    empty, as env.env has them)."""
    for name in WEB_VARIABLES:
        monkeypatch.setenv(name, env.get(name, ""))
    import face_detect_api.gunicorn_conf as conf

    return importlib.reload(conf)


def test_gunicorn_runs_threaded_workers_one_process_per_core_by_default(monkeypatch):
    conf = _gunicorn_conf(monkeypatch)
    assert conf.worker_class == "gthread" and conf.threads == 8 and conf.keepalive == 5
    assert conf.workers == max(2, len(os.sched_getaffinity(0)))


def test_gunicorn_processes_threads_and_keepalive_come_from_the_environment(monkeypatch):
    conf = _gunicorn_conf(monkeypatch, WEB_WORKERS="3", WEB_THREADS="4", WEB_KEEPALIVE="2")
    assert (conf.workers, conf.threads, conf.keepalive, conf.worker_class) == (3, 4, 2, "gthread")
    # One thread: gunicorn's plain sync worker.
    assert _gunicorn_conf(monkeypatch, WEB_THREADS="1").worker_class == "sync"


def test_gunicorn_accepts_the_settings(monkeypatch):
    from gunicorn.config import Config

    conf = _gunicorn_conf(monkeypatch, WEB_WORKERS="3")
    config = Config()
    for name in ("workers", "threads", "worker_class", "keepalive", "accesslog", "loglevel"):
        config.set(name, getattr(conf, name))
    assert (config.workers, config.threads, config.worker_class_str, config.keepalive) == (3, 8, "gthread", 5)


def test_no_command_line_overrides_the_processes_or_threads():
    """Options on gunicorn's command line win over its config: the launchers leave them to
    WEB_WORKERS and WEB_THREADS."""
    import yaml

    web = (ROOT / "Procfile").read_text().splitlines()[0]
    dockerfile_cmd = [line for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("CMD")][0]
    compose_web = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())["services"]["web"]["command"]
    for launcher in (web, dockerfile_cmd, compose_web):
        assert "gunicorn_conf" in launcher
        for option in ("--workers", "-w ", "--threads", "--worker-class", "-k "):
            assert option not in launcher, launcher


def test_connection_settings_are_read_from_the_environment():
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "face_detect_api.settings",
        "DATABASE_CONN_MAX_AGE": "17",
        "S3_POOL_CONNECTIONS": "5",
    }
    code = (
        "from django.conf import settings as s; d = s.DATABASES['default']; "
        "print(d['CONN_MAX_AGE'], d['CONN_HEALTH_CHECKS'], s.S3_POOL_CONNECTIONS)"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["17", "True", "5"]


def test_one_s3_client_per_process_shared_by_its_threads_with_a_pool_for_them(settings):
    settings.S3_POOL_CONNECTIONS = 5
    storage.reset_clients()
    try:
        clients = []
        threads = [threading.Thread(target=lambda: clients.append(storage.client())) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len({id(c) for c in clients}) == 1 and clients[0] is storage.client()
        assert clients[0]._http.connection_pool_kw["maxsize"] == 5
    finally:
        storage.reset_clients()


def test_publishing_a_job_asks_no_result_of_the_backend(monkeypatch):
    """Nothing reads detect_faces' return value: the publish must not make the result backend
    subscribe to it (a Redis round trip, and one more to unsubscribe, per upload)."""
    from face_detect_api.celery import app

    sent = []
    monkeypatch.setattr(app, "send_task", lambda name, *args, **kwargs: sent.append((name, kwargs)))
    services.submission._publish_chain(uuid.uuid4())
    assert [name for name, _ in sent] == [services.DETECT_TASK]
    assert sent[0][1]["ignore_result"] is True
    # The delivery still follows detection, in the message's chain, and stores no result either.
    assert [task["task"] for task in sent[0][1]["chain"]] == [services.DELIVER_RESULT_TASK]
    assert sent[0][1]["chain"][0]["options"]["ignore_result"] is True


def _published(publish) -> dict:
    """What ``publish()`` puts on the detect queue, as a consumer gets it: read from a queue of
    this test's own bound to the same exchange and routing key (the broker copies it there)."""
    from django.conf import settings
    from kombu import Exchange, Queue

    from face_detect_api.celery import app

    name = settings.CELERY_QUEUE_DETECT
    with app.connection_for_write() as conn:
        probe = Queue(f"{name}-probe-{uuid.uuid4().hex[:8]}", Exchange(name, type="direct"), routing_key=name, exclusive=True)(
            conn.default_channel
        )
        probe.declare()
        try:
            publish()
            deadline = time.monotonic() + 10
            while (message := probe.get(no_ack=True)) is None and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            probe.delete()
    assert message is not None, "nothing was published"
    return {
        "body": message.decode(),
        "headers": dict(message.headers),
        "properties": {k: v for k, v in message.properties.items() if k not in ("delivery_info", "application_headers")},
        "content": (message.content_type, message.content_encoding),
        "route": (message.delivery_info["exchange"], message.delivery_info["routing_key"]),
    }


def test_the_lean_publish_sends_the_message_celerys_chain_sent():
    """_publish_chain builds the message without Celery's canvas: the same body, headers (the
    request id among them), properties, exchange and routing key as the chain it replaced, but
    for the ids (new for each message) and the delivery's ignore_result."""
    require("rabbitmq")
    from celery import signature

    from core.logging import log_context

    job = str(uuid.uuid4())

    def chain() -> None:
        (
            signature(services.DETECT_TASK, args=(job,), immutable=True)
            | signature(services.DELIVER_RESULT_TASK, args=(job,), immutable=True)
        ).apply_async(ignore_result=True)

    with log_context(http_request_id="front-door-test"):
        before = _published(chain)
        after = _published(lambda: services.submission._publish_chain(uuid.UUID(job)))

    for message in (before, after):
        assert message["headers"]["http_request_id"] == "front-door-test"
        task_id = message["headers"]["id"]
        assert message["headers"]["root_id"] == message["properties"]["correlation_id"] == task_id
        message["headers"]["id"] = message["headers"]["root_id"] = message["properties"]["correlation_id"] = "ID"
        delivery = message["body"][2]["chain"][0]
        assert delivery["options"]["task_id"] not in ("", task_id)
        delivery["options"]["task_id"] = "DELIVERY ID"
    # The one difference meant: the delivery's result is not stored either.
    before["body"][2]["chain"][0]["options"]["ignore_result"] = True
    assert after == before


@pytest.mark.django_db(transaction=True)
def test_the_publish_record_does_not_wait_for_the_disk(api_client, s3, monkeypatch):
    """The job's row is committed (and flushed) before its 202; the record that it was published
    is not worth a second flush: a crash that loses it only makes the sweeper publish it again."""
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL's synchronous_commit")
    monkeypatch.setattr("jobs.services.submission.image_job_enqueue", lambda *, image_id: None)
    job = Image.objects.get(id=upload(api_client, photo_bytes("coffee.png"), request_id="flush").json()["id"])
    monkeypatch.undo()
    monkeypatch.setattr("jobs.services.submission._publish_chain", lambda image_id: None)

    with CaptureQueriesContext(connection) as queries:
        assert services.image_job_enqueue(image_id=job.id)
    assert any("synchronous_commit" in q["sql"] for q in queries.captured_queries)
    with connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        assert cursor.fetchone()[0] == "on"  # for that transaction only
    job.refresh_from_db()
    assert job.enqueue_count == 1 and job.enqueued_at is not None

    # Inside a caller's transaction it changes nothing: that commit must wait.
    with transaction.atomic(), CaptureQueriesContext(connection) as queries:
        assert services.image_job_enqueue(image_id=job.id)
    assert not any("synchronous_commit" in q["sql"] for q in queries.captured_queries)
    job.refresh_from_db()
    assert job.enqueue_count == 2


@pytest.mark.django_db(transaction=True)
def test_an_upload_costs_three_statements(api_client, s3):
    """The repeat check, the INSERT (committing by itself; both built once per process) and the
    publish record (one round trip): the key, the active version and the rollout come from the
    process's cache (core.statecache), no BEGIN or COMMIT of their own."""
    require("postgres", "rabbitmq", "redis")
    assert upload(api_client, photo_bytes("coffee.png"), request_id="first").status_code == 202  # fills the caches
    with CaptureQueriesContext(connection) as queries:
        answer = upload(api_client, photo_bytes("coffee.png"), request_id="second")
    assert answer.status_code == 202
    statements = [q["sql"] for q in queries.captured_queries]
    assert len(statements) == 3, statements
    assert statements[0].startswith('SELECT 1 FROM "api_image"')
    assert statements[1].startswith('INSERT INTO "api_image"')
    assert statements[2].startswith("SET LOCAL synchronous_commit TO OFF; UPDATE")
    job = Image.objects.get(id=answer.json()["id"])
    assert job.enqueue_count == 1 and job.enqueued_at is not None


def _row(image_id) -> dict:
    return Image.objects.filter(id=image_id).values().get()


@pytest.mark.django_db
def test_the_prebuilt_insert_writes_the_row_the_orm_writes(api_client, s3, monkeypatch):
    """Every column of an uploaded job's row as ``Image.objects.create`` would have written it
    from the same values (its timestamps aside, taken a moment apart)."""
    monkeypatch.setattr("jobs.services.submission.image_job_enqueue", lambda *, image_id: None)
    answer = upload(
        api_client, photo_bytes("coffee.png"), name="cup.png", request_id="prebuilt", cohort="beta", labels="face", expires_in=600
    )
    assert answer.status_code == 202
    written = _row(answer.json()["id"])
    job = Image.objects.get(id=written["id"])
    copy = {name: value for name, value in written.items() if name not in ("id", "request_id", "created_at", "updated_at")}
    orm = _row(Image.objects.create(request_id="by-the-orm", **copy).id)
    for name in ("id", "request_id", "created_at", "updated_at"):
        del written[name], orm[name]
    assert written == orm
    assert job.labels == ["face"] and job.cohort == "beta" and job.expires_at is not None and job.status == "queued"
    # Set by the fields' pre_save (auto_now_add, auto_now), each reading the clock, as the ORM does.
    assert dt.timedelta(0) <= job.updated_at - job.created_at < dt.timedelta(seconds=1)


def test_nothing_listens_to_a_jobs_save_signals():
    """The upload's INSERT is built once per process and sends no pre_save or post_save for
    Image (jobs/services/submission.py, _image_insert). A receiver for them would never run for
    uploads: make the insert send the signals first."""
    from django.db.models.signals import post_save, pre_save

    assert not pre_save.has_listeners(Image) and not post_save.has_listeners(Image)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("same_photo", [True, False])
def test_a_request_id_taken_between_the_check_and_the_insert(api_client, s3, monkeypatch, same_photo):
    """Two uploads of one request_id that both pass the repeat check: the second's INSERT meets
    the unique constraint, its stored photo is deleted, and it answers as a repeat would (the
    same job, or 409 for another photo). Outside a transaction, as an unrouted upload is."""
    require("postgres", "rabbitmq", "redis")
    monkeypatch.setattr("jobs.services.submission.image_job_enqueue", lambda *, image_id: None)
    first = upload(api_client, photo_bytes("coffee.png"), request_id="raced")
    assert first.status_code == 202
    monkeypatch.setattr("jobs.services.submission._is_repeat", lambda client_id, request_id: False)
    second = upload(api_client, photo_bytes("coffee.png" if same_photo else "chelsea_cat.png"), request_id="raced")
    if same_photo:
        assert second.status_code == 200 and second.json()["id"] == first.json()["id"]
    else:
        assert second.status_code == 409 and second.json()["error"]["code"] == "request_id_conflict"
    assert Image.objects.filter(request_id="raced").count() == 1
    assert storage.storage_list(prefix="originals/") == [Image.objects.get(request_id="raced").original_key]
