"""Routing on the real RabbitMQ: each queue has an exchange and a routing key of its own, a message
for one queue never reaches the other, and `manage.py broker_migrate` removes the shared binding
of older releases. Bindings are read from the broker itself (`rabbitmqctl list_bindings`)."""

import io
import json
import os
import shutil
import subprocess
import sys
import time
import uuid

import pytest
from django.conf import settings
from django.core.management import call_command
from kombu import Exchange, Producer, Queue

from tests.conftest import IN_CI, ROOT, require

DETECT_TASK = "workers.tasks.detect_faces"
DELIVER_TASK = "workers.tasks.deliver_result"


# --- Helpers ----------------------------------------------------------------------------------------


def _rabbitmqctl(*args: str) -> list[dict]:
    if shutil.which("rabbitmqctl") is None:
        message = "needs rabbitmqctl on PATH to list the broker's bindings"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    result = subprocess.run(["rabbitmqctl", *args, "-q", "--formatter", "json"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout or "[]")


def bindings(vhost: str, *queues: str) -> set[tuple[str, str, str]]:
    """(exchange, queue, routing key) of every binding of these queues, as RabbitMQ lists them,
    without the implicit one of the default exchange ("")."""
    rows = _rabbitmqctl("list_bindings", "-p", vhost, "source_name", "destination_name", "destination_kind", "routing_key")
    return {
        (row["source_name"], row["destination_name"], row["routing_key"])
        for row in rows
        if row["destination_kind"] == "queue" and row["destination_name"] in queues and row["source_name"] != ""
    }


def exchanges(vhost: str, *names: str) -> dict[str, tuple[str, bool]]:
    """name: (type, durable) of these exchanges, where they exist."""
    rows = _rabbitmqctl("list_exchanges", "-p", vhost, "name", "type", "durable")
    return {row["name"]: (row["type"], row["durable"]) for row in rows if row["name"] in names}


def _channel(conn):
    """A fresh channel: a refused operation closes the channel it ran on."""
    return conn.channel()


def _delete_queues_and_exchanges(conn, names) -> None:
    for name in names:
        for op in ("queue_delete", "exchange_delete"):
            channel = _channel(conn)
            try:
                getattr(channel, op)(name)
            except Exception:
                pass
            finally:
                try:
                    channel.close()
                except Exception:
                    pass


def _identity(message) -> str:
    headers = message.headers or {}
    return headers.get("probe") or headers.get("id")


def collect(conn, queues: list[str], expected: set[str], settle: float = 1.0, timeout: float = 15.0) -> dict[str, list[str]]:
    """Take every message from these queues, until all `expected` identities have arrived and then
    `settle` seconds more (a copy routed to a wrong queue would arrive by then): queue -> ids."""
    channel = _channel(conn)
    found: dict[str, list[str]] = {name: [] for name in queues}
    deadline = time.monotonic() + timeout
    settled_at = None
    try:
        while True:
            got = False
            for name in queues:
                message = Queue(name, no_declare=True).bind(channel).get(no_ack=True)
                if message is not None:
                    found[name].append(_identity(message))
                    got = True
            seen = {ident for ids in found.values() for ident in ids}
            now = time.monotonic()
            if expected <= seen and settled_at is None:
                settled_at = now + settle
            if (settled_at is not None and now >= settled_at) or now >= deadline:
                return found
            if not got:
                time.sleep(0.05)
    finally:
        channel.close()


def publish_probe(conn, exchange: str, routing_key: str) -> str:
    """Publish one persistent message with kombu to this exchange and key; its identity."""
    probe = f"probe-{uuid.uuid4().hex}"
    channel = _channel(conn)
    try:
        Producer(channel).publish(
            {"probe": probe},
            exchange=exchange,
            routing_key=routing_key,
            serializer="json",
            headers={"probe": probe},
            delivery_mode="persistent",
        )
    finally:
        channel.close()
    return probe


def send_task(app, name: str) -> str:
    """Publish a task the way the API and the workers do (Celery's router and settings)."""
    return app.send_task(name, args=[str(uuid.uuid4())], ignore_result=True).id


@pytest.fixture
def broker():
    """A connection to this run's RabbitMQ, its two queues and their exchanges deleted before and
    after the test (a test starts from an empty broker and leaves nothing behind)."""
    require("rabbitmq")
    from face_detect_api.celery import app

    names = [settings.CELERY_QUEUE_DETECT, settings.CELERY_QUEUE_DELIVER]
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=3)
        _delete_queues_and_exchanges(conn, names)
        yield app, conn, conn.virtual_host, names
        _delete_queues_and_exchanges(conn, names)


def declare_legacy(conn, detect: str, deliver: str) -> None:
    """The broker as releases before one-exchange-per-queue left it: both durable queues bound to
    one exchange named after the detect queue, with the routing key "detect" (Celery's default
    exchange and routing key, both named after the default queue)."""
    shared = Exchange(detect, type="direct", durable=True)
    channel = _channel(conn)
    try:
        for name in (detect, deliver):
            Queue(name, shared, routing_key=detect, durable=True).bind(channel).declare()
    finally:
        channel.close()


# --- Tests ------------------------------------------------------------------------------------------


def test_each_queue_is_bound_only_to_its_own_exchange_with_its_own_key(broker):
    """After broker_migrate declares the queues, RabbitMQ lists one binding per queue: its own durable
    direct exchange, its own name as key."""
    require("rabbitmq")
    app, conn, vhost, (detect, deliver) = broker
    call_command("broker_migrate", stdout=io.StringIO())
    assert bindings(vhost, detect, deliver) == {(detect, detect, detect), (deliver, deliver, deliver)}
    assert exchanges(vhost, detect, deliver) == {detect: ("direct", True), deliver: ("direct", True)}


def test_a_worker_declaring_its_queues_binds_them_the_same_way(broker):
    """Celery's own declaration of the configured queues (what a worker and a publisher do) creates the same two separate bindings."""
    require("rabbitmq")
    app, conn, vhost, (detect, deliver) = broker
    channel = _channel(conn)
    try:
        for queue in app.amqp.queues.values():
            queue(channel).declare()
    finally:
        channel.close()
    assert bindings(vhost, detect, deliver) == {(detect, detect, detect), (deliver, deliver, deliver)}


def test_a_message_for_one_queue_never_reaches_the_other(broker):
    """Messages published to each queue's exchange and key, by kombu and by Celery's router, land in that queue only."""
    require("rabbitmq")
    app, conn, vhost, (detect, deliver) = broker
    call_command("broker_migrate", stdout=io.StringIO())
    to_detect = {publish_probe(conn, detect, detect), send_task(app, DETECT_TASK)}
    to_deliver = {publish_probe(conn, deliver, deliver), send_task(app, DELIVER_TASK), send_task(app, "workers.tasks.sweep")}
    found = collect(conn, [detect, deliver], to_detect | to_deliver)
    assert sorted(found[detect]) == sorted(to_detect)
    assert sorted(found[deliver]) == sorted(to_deliver)


def test_broker_migrate_removes_the_legacy_shared_binding(broker):
    """On a broker left by an older release, broker_migrate unbinds the deliver queue from the detect
    exchange; routing is then separate, and a second run changes nothing."""
    require("rabbitmq")
    app, conn, vhost, (detect, deliver) = broker
    declare_legacy(conn, detect, deliver)
    # The old state, as it really is on the broker: a detection message also lands in `deliver`.
    assert bindings(vhost, detect, deliver) == {(detect, detect, detect), (detect, deliver, detect)}
    probe = publish_probe(conn, detect, detect)
    assert collect(conn, [detect, deliver], {probe}, settle=0.5) == {detect: [probe], deliver: [probe]}

    out = io.StringIO()
    call_command("broker_migrate", stdout=out)
    assert f"unbound queue {deliver} from exchange {detect} with key {detect}" in out.getvalue()
    assert bindings(vhost, detect, deliver) == {(detect, detect, detect), (deliver, deliver, deliver)}
    to_detect = {publish_probe(conn, detect, detect), send_task(app, DETECT_TASK)}
    to_deliver = {publish_probe(conn, deliver, deliver), send_task(app, DELIVER_TASK)}
    found = collect(conn, [detect, deliver], to_detect | to_deliver)
    assert sorted(found[detect]) == sorted(to_detect)
    assert sorted(found[deliver]) == sorted(to_deliver)

    call_command("broker_migrate", stdout=io.StringIO())
    assert bindings(vhost, detect, deliver) == {(detect, detect, detect), (deliver, deliver, deliver)}


def test_filesystem_broker_needs_no_migration_and_writes_only_under_its_folder(tmp_path):
    """With CELERY_BROKER_URL=filesystem:// broker_migrate has nothing to do, and Kombu's exchange
    tables go under the broker folder, not the working directory."""
    work, broker_dir, results = tmp_path / "cwd", tmp_path / "broker", tmp_path / "results"
    work.mkdir()
    results.mkdir()
    code = (
        "import django; django.setup()\n"
        "from django.core.management import call_command\n"
        "call_command('broker_migrate')\n"
        "from face_detect_api.celery import app\n"
        f"app.send_task({DETECT_TASK!r}, args=['x'], ignore_result=True)\n"
        f"app.send_task({DELIVER_TASK!r}, args=['x'], ignore_result=True)\n"
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "PYTHONPATH": str(ROOT),
        "CELERY_BROKER_URL": "filesystem://",
        "CELERY_BROKER_FOLDER": str(broker_dir),
        "CELERY_RESULT_BACKEND": f"file://{results}",
    }
    result = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "nothing to do" in result.stdout
    assert list(work.iterdir()) == []
    detect, deliver = settings.CELERY_QUEUE_DETECT, settings.CELERY_QUEUE_DELIVER
    tables = {p.name: json.loads(p.read_text()) for p in (broker_dir / "control").glob("*.exchange")}
    assert tables[f"{detect}.exchange"] == [[detect, "", detect]]
    assert tables[f"{deliver}.exchange"] == [[deliver, "", deliver]]
    # One message each, in its own queue (a file is named <time>_<uuid>.<queue>.msg).
    assert sorted(p.name.partition(".")[2] for p in (broker_dir / "out").iterdir()) == sorted([f"{detect}.msg", f"{deliver}.msg"])
