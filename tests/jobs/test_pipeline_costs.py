"""What a job costs the database: the statements of the detect task and of its callback, counted
with Django's CaptureQueriesContext (transaction control aside: BEGIN, COMMIT and the test's own
savepoints), in-process with the stub detector. docs/benchmarks.md's pipeline section has the
figures; a change that adds a round trip to the hot path shows here. And the guarantees the
fewer statements keep: a callback whose first try is leased with its row is never claimed twice
at once, and never lost."""

import datetime as dt
import time

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from callbacks import services as outbox
from callbacks.models import CallbackDelivery, CallbackHost
from callbacks.sender import sender_start, sender_stop
from jobs import services
from jobs.models import Image
from tests.conftest import at_once, photo_bytes, upload


def statements(captured: CaptureQueriesContext) -> list[str]:
    return [q["sql"] for q in captured.captured_queries if not q["sql"].startswith(("SAVEPOINT", "RELEASE SAVEPOINT"))]


@pytest.fixture
def job(api_client, s3, monkeypatch, stub_detector, receiver):
    """A completed job (detected by hand) whose callback_url is the receiver."""
    monkeypatch.setattr("jobs.services.submission.image_job_enqueue", lambda *, image_id: None)
    body = upload(api_client, photo_bytes("astronaut_1face.png"), request_id="costs", callback_url=receiver.url()).json()
    return Image.objects.get(id=body["id"])


@pytest.mark.django_db
def test_the_detect_task_takes_three_statements(job):
    """Start (one conditional UPDATE that reads the row back with its version), then complete
    (one conditional UPDATE that reads it back, the detections in one insert): no delete of
    earlier detections on a first attempt, no second write for the annotated image."""
    with CaptureQueriesContext(connection) as captured:
        services.image_job_detect(image_id=job.id)
    sql = statements(captured)
    assert len(sql) == 3, sql
    assert sql[0].lstrip().startswith("WITH started AS (") and sql[1].lstrip().startswith("UPDATE api_image SET")
    assert sql[2].startswith('INSERT INTO "api_face"')
    assert sum(s.startswith('INSERT INTO "api_face"') for s in sql) == 1
    job.refresh_from_db()
    assert job.status == "completed" and job.annotated_key and job.faces.count() == 1


@pytest.mark.django_db
def test_a_callback_row_is_made_with_its_first_lease_in_six_statements(job):
    """The job locked and read with its detections and deliveries, the receiver locked and its
    tries in flight counted, the row written leased: no claim transaction after it."""
    services.image_job_detect(image_id=job.id)
    services.image_job_callback_delivery_claimed(image_id=job.id)  # the receiver's row, once
    CallbackDelivery.objects.all().delete()
    with CaptureQueriesContext(connection) as captured:
        row, claim = services.image_job_callback_delivery_claimed(image_id=job.id)
    assert len(statements(captured)) == 6, statements(captured)
    assert claim is not None and claim.delivery_id == row.id and claim.number == 1
    row.refresh_from_db()
    assert row.attempt_count == 1 and row.sending_until > timezone.now()
    # Held: no sender's claim and no direct try takes it while the lease runs.
    assert outbox.callback_deliveries_claim(limit=10, asked=[row.id]) == []
    assert outbox.callback_delivery_claim(delivery_id=row.id) is None
    # Never lost: a try that is never recorded (its process died) is claimed again after the lease.
    CallbackDelivery.objects.filter(id=row.id).update(next_attempt_at=timezone.now() - dt.timedelta(seconds=1), sending_until=None)
    (again,) = outbox.callback_deliveries_claim(limit=10)
    assert again.delivery_id == row.id and again.number == 2


@pytest.mark.django_db
def test_the_body_is_the_one_an_unleased_row_gets(job):
    """The lease is written after the body is rendered: the body says pending, no attempts."""
    services.image_job_detect(image_id=job.id)
    services.image_job_callback_delivery_claimed(image_id=job.id)
    CallbackDelivery.objects.all().delete()
    leased, claim = services.image_job_callback_delivery_claimed(image_id=job.id)
    assert claim is not None
    CallbackDelivery.objects.all().delete()
    plain = services.image_job_callback_delivery(image_id=job.id)
    assert plain.attempt_count == 0
    assert leased.body.replace(leased.webhook_id, "") == plain.body.replace(plain.webhook_id, "")


@pytest.mark.django_db
@pytest.mark.parametrize("why", ["breaker open", "cap reached"])
def test_a_receiver_that_must_wait_gets_no_lease_at_creation(job, settings, why):
    """An open breaker or a full per-host cap: the row is made due, for the senders' fair turns."""
    services.image_job_detect(image_id=job.id)
    first, _ = services.image_job_callback_delivery_claimed(image_id=job.id, claim=False)
    host = CallbackHost.objects.get(host=first.host)
    first.delete()
    if why == "breaker open":
        host.consecutive_failures, host.open_until = settings.CALLBACK_BREAKER_FAILURES, timezone.now() + dt.timedelta(seconds=60)
        host.save()
    else:
        settings.CALLBACK_MAX_IN_FLIGHT_PER_HOST = 0
    row, claim = services.image_job_callback_delivery_claimed(image_id=job.id)
    assert claim is None
    row.refresh_from_db()
    assert row.attempt_count == 0 and row.sending_until is None and row.next_attempt_at <= timezone.now()


@pytest.mark.django_db
def test_recording_a_delivered_first_try_takes_two_statements(job, receiver):
    """One statement: the attempt, the row's new state, its job, the receiver's breaker read
    (closed, nothing to write); then whether it is the job's first delivery. No BEGIN/COMMIT."""
    services.image_job_detect(image_id=job.id)
    row = services.image_job_callback_delivery(image_id=job.id)
    claim = outbox.callback_delivery_claim(delivery_id=row.id)
    result = outbox.post_signed(claim.url, claim.body, webhook_id=claim.webhook_id)
    with CaptureQueriesContext(connection) as captured:
        outbox.callback_delivery_record(claim=claim, result=result)
    assert len(statements(captured)) == 2, statements(captured)
    assert statements(captured)[0].lstrip().startswith("WITH d AS (")
    row.refresh_from_db()
    assert row.status == "delivered" and row.finished_at and row.sending_until is None and row.next_attempt_at is None
    attempt = row.attempts.get()
    assert (attempt.number, attempt.status_code, attempt.duration_ms) == (1, 200, result.duration_ms)


def _wait_delivered(job_id, timeout: float = 10) -> CallbackDelivery:
    deadline = time.monotonic() + timeout
    while CallbackDelivery.objects.get(image_id=job_id).status == "pending" and time.monotonic() < deadline:
        time.sleep(0.05)
    return CallbackDelivery.objects.get(image_id=job_id)


@pytest.mark.django_db(transaction=True)
def test_the_deliver_task_hands_its_leased_try_to_the_running_sender(job, receiver, monkeypatch):
    """In a delivering process (its sender running), the task's new row goes out on a sender
    thread at once, without a claim of the sender's own: one POST, one attempt, delivered."""
    from workers.tasks import deliver_result

    monkeypatch.setattr("callbacks.sender.callback_deliveries_claim", lambda **_: [])

    services.image_job_detect(image_id=job.id)
    CallbackHost.objects.get_or_create(host=outbox.host_of(receiver.url()))
    sender = sender_start()
    try:
        result = deliver_result.apply(args=[str(job.id)])
        assert result.successful(), result.traceback
        assert len(receiver.wait(1, timeout=10)) == 1
        row = _wait_delivered(job.id)
    finally:
        sender_stop()
    assert row.status == "delivered" and row.attempt_count == 1 and row.attempts.count() == 1
    assert sender.in_flight == 0


@pytest.mark.django_db(transaction=True)
def test_the_detect_task_sends_its_callback_itself_and_drops_the_chained_delivery(job, receiver, monkeypatch):
    """A detect process's sender (claims nothing of its own): the task that finished the job
    makes its delivery leased and hands the try to a sender thread; the chain's delivery task,
    which would only have found that row, is dropped from the request."""
    from workers.tasks import detect_faces

    monkeypatch.setattr("callbacks.sender.callback_deliveries_claim", lambda **_: pytest.fail("a detect process's sender claims nothing"))
    CallbackHost.objects.get_or_create(host=outbox.host_of(receiver.url()))
    sender = sender_start(claims=False)
    detect_faces.push_request(chain=[{"task": services.DELIVER_RESULT_TASK, "args": [str(job.id)]}], retries=0)
    try:
        assert detect_faces.run(str(job.id)) == str(job.id)
        assert detect_faces.request.chain is None
        assert len(receiver.wait(1, timeout=10)) == 1
        row = _wait_delivered(job.id)
    finally:
        detect_faces.pop_request()
        sender_stop()
    assert row.status == "delivered" and row.attempt_count == 1 and row.attempts.count() == 1
    assert sender.in_flight == 0


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("case", ["no sender", "turned off", "no drawing", "receiver at its cap"])
def test_the_chained_delivery_stays_when_the_detect_task_cannot_send(job, receiver, monkeypatch, settings, case):
    """Whatever stops the detect task from sending, the chain's delivery task stays in the
    request (it draws, waits its receiver's turn or sends, as before) and no thread stays held."""
    from workers.tasks import detect_faces

    CallbackHost.objects.get_or_create(host=outbox.host_of(receiver.url()))
    if case == "turned off":
        settings.DETECT_SENDS_CALLBACKS = False
    if case == "no drawing":
        monkeypatch.setattr("jobs.services.detection.annotation_store", lambda **_: "")
    if case == "receiver at its cap":
        settings.CALLBACK_MAX_IN_FLIGHT_PER_HOST = 0
    sender = sender_start(claims=False) if case != "no sender" else None
    chain = [{"task": services.DELIVER_RESULT_TASK, "args": [str(job.id)]}]
    detect_faces.push_request(chain=chain, retries=0)
    try:
        detect_faces.run(str(job.id))
        assert detect_faces.request.chain == chain
    finally:
        detect_faces.pop_request()
        if sender is not None:
            assert sender.in_flight == 0
            sender_stop()
    job.refresh_from_db()
    assert job.status == "completed"
    rows = list(CallbackDelivery.objects.filter(image_id=job.id))
    # Made and left pending for the deliverer only when its receiver must wait its turn.
    assert [(r.status, r.attempt_count) for r in rows] == ([("pending", 0)] if case == "receiver at its cap" else [])
    assert receiver.received.empty()


@pytest.mark.django_db(transaction=True)
def test_a_completion_makes_its_callback_leased_with_the_body_the_delivery_task_would_render(job, receiver):
    """With a sending thread held, the completion writes the job's delivery in its own
    transaction, leased for the first try, and hands the claim over only once committed; the
    body is the one rendered from the rows read back (as the delivery task renders it)."""
    import json

    from callbacks.models import CallbackDelivery as Delivery
    from jobs.representation import image_representation
    from jobs.selectors import JOB_PREFETCH

    CallbackHost.objects.get_or_create(host=outbox.host_of(receiver.url()))
    claims = []
    services.image_job_detect(image_id=job.id, callback_claimed=claims.append)
    row = CallbackDelivery.objects.get(image_id=job.id)
    assert [c.delivery_id for c in claims] == [row.id] and claims[0].number == 1
    assert row.status == "pending" and row.attempt_count == 1 and row.sending_until is not None
    reread = Image.objects.prefetch_related(*JOB_PREFETCH).get(id=job.id)
    assert reread.face_count == 1
    unsaved = Delivery(image_id=job.id, webhook_id=row.webhook_id, url=row.url)
    assert json.loads(row.body) == image_representation(reread, delivery=unsaved)
    assert json.loads(claims[0].body) == json.loads(row.body)


@pytest.mark.django_db
def test_a_completion_with_its_callback_takes_six_statements(job, receiver):
    """The detect task's three, and the receiver locked, its tries in flight counted and the
    delivery written, in the completion's transaction: no second read of the job or its rows."""
    CallbackHost.objects.get_or_create(host=outbox.host_of(receiver.url()))
    with CaptureQueriesContext(connection) as captured:
        services.image_job_detect(image_id=job.id, callback_claimed=lambda claim: None)
    sql = statements(captured)
    assert len(sql) == 6, sql
    assert CallbackDelivery.objects.get(image_id=job.id).attempt_count == 1


@pytest.mark.django_db
def test_recording_the_first_try_of_a_claim_made_with_its_row_takes_one_statement(
    job, receiver, monkeypatch, django_capture_on_commit_callbacks
):
    """A claim made with its job's delivery knows it is the job's first: no query for that. The
    job's whole time is still counted once, as for any first delivered callback."""
    from core import metrics

    CallbackHost.objects.get_or_create(host=outbox.host_of(receiver.url()))
    claims = []
    with django_capture_on_commit_callbacks(execute=True):
        services.image_job_detect(image_id=job.id, callback_claimed=claims.append)
    assert len(claims) == 1 and claims[0].first_of_job is True
    result = outbox.post_signed(claims[0].url, claims[0].body, webhook_id=claims[0].webhook_id)
    counted = []
    original = metrics.callback_attempted
    monkeypatch.setattr(metrics, "callback_attempted", lambda **kw: counted.append(kw) or original(**kw))
    with CaptureQueriesContext(connection) as captured:
        outbox.callback_delivery_record(claim=claims[0], result=result)
    assert len(statements(captured)) == 1, statements(captured)
    assert counted[0]["outcome"] == "delivered" and counted[0]["job"].id == job.id


@pytest.mark.django_db(transaction=True)
def test_a_callback_that_cannot_be_made_with_the_completion_never_stops_the_job_completing(job, receiver, monkeypatch):
    """Its savepoint is rolled back, the job completes with its detections, no claim is handed
    over and no row is left: the delivery task (the chain, left in place) makes it as before."""

    def broken(*args, **kwargs):
        raise RuntimeError("render failed")

    monkeypatch.setattr("jobs.services.detection.image_representation", broken)
    claims = []
    services.image_job_detect(image_id=job.id, callback_claimed=claims.append)
    job.refresh_from_db()
    assert job.status == "completed" and job.faces.count() == 1 and job.annotated_key
    assert claims == [] and not CallbackDelivery.objects.filter(image_id=job.id).exists()
    row, claim = services.image_job_callback_delivery_claimed(image_id=job.id)
    assert row is not None and claim is not None


@pytest.mark.django_db
def test_the_detect_task_reads_no_row_for_its_log_fields(job):
    """The job's start adds the job's log fields from the row it locks: the task's statements
    are the detection's three (no shadow-run check for a job outside a rollout: tests/jobs/
    test_shadow.py has those), and its lines carry the job's fields."""
    import logging

    from core.logging import log_context_fields
    from workers.tasks import detect_faces

    seen = []

    class Spy(logging.Handler):
        def emit(self, record):
            seen.append((record.getMessage(), log_context_fields()))

    spy = Spy(level=logging.INFO)
    logging.getLogger("jobs.services.detection").addHandler(spy)
    try:
        with CaptureQueriesContext(connection) as captured:
            result = detect_faces.apply(args=[str(job.id)])
    finally:
        logging.getLogger("jobs.services.detection").removeHandler(spy)
    assert result.successful(), result.traceback
    sql = statements(captured)
    assert len(sql) == 3, sql
    assert not any("jobs_shadowrun" in s for s in sql), sql
    detected = [fields for message, fields in seen if " kept) with " in message]
    assert detected and detected[0]["job_id"] == str(job.id) and detected[0]["request_id"] == "costs"


@pytest.mark.django_db(transaction=True)
def test_a_job_without_a_callback_url_drops_the_chained_delivery_without_a_second_look(api_client, s3, monkeypatch, stub_detector):
    """The completion settles it (nothing to send): the task's statements are the detection's
    three, no second transaction on the job, and the thread is given back."""
    from core.logging import log_context
    from workers.tasks import detect_faces

    monkeypatch.setattr("jobs.services.submission.image_job_enqueue", lambda *, image_id: None)
    job_id = upload(api_client, photo_bytes("astronaut_1face.png"), request_id="no-callback").json()["id"]
    sender = sender_start(claims=False)
    detect_faces.push_request(chain=[{"task": services.DELIVER_RESULT_TASK, "args": [job_id]}], retries=0)
    try:
        # In a task's log scope, as a worker runs it (the start fills the job's fields).
        with log_context(task=detect_faces.name), CaptureQueriesContext(connection) as captured:
            detect_faces.run(job_id)
        assert detect_faces.request.chain is None
    finally:
        detect_faces.pop_request()
        sender_stop()
    sql = [q for q in statements(captured) if q not in ("BEGIN", "COMMIT")]
    assert len(sql) == 3, sql
    assert sender.in_flight == 0 and not CallbackDelivery.objects.filter(image_id=job_id).exists()


def _result(code: int | None, *, error: str = "") -> "outbox.PostResult":
    from callbacks.http import PostResult

    return PostResult(started_at=timezone.now(), status_code=code, error=error, duration_ms=12, response_excerpt="busy")


@pytest.mark.django_db
def test_the_one_statement_record_schedules_a_retry_and_counts_the_failure(job, settings):
    """A 503 on the first try: the attempt's row, the delivery still pending with its next try
    scheduled and its lease given back, and the receiver's breaker counting one failure."""
    settings.CALLBACK_RETRY_DELAYS = [30]
    services.image_job_detect(image_id=job.id)
    row = services.image_job_callback_delivery(image_id=job.id)
    claim = outbox.callback_delivery_claim(delivery_id=row.id)
    before = timezone.now()
    assert outbox.callback_delivery_record(claim=claim, result=_result(503)) == pytest.approx(30, rel=0.11)
    row.refresh_from_db()
    assert row.status == "pending" and row.finished_at is None and row.sending_until is None
    assert row.last_status_code == 503 and row.last_error == "HTTP 503"
    assert before + dt.timedelta(seconds=26) < row.next_attempt_at < timezone.now() + dt.timedelta(seconds=34)
    attempt = row.attempts.get()
    assert (attempt.number, attempt.status_code, attempt.response_excerpt) == (1, 503, "busy")
    assert CallbackHost.objects.get(host=claim.host).consecutive_failures == 1
    # The next answer closes it again: the statement's breaker read says it counts failures.
    CallbackDelivery.objects.filter(id=row.id).update(next_attempt_at=timezone.now())
    claim = outbox.callback_delivery_claim(delivery_id=row.id)
    assert outbox.callback_delivery_record(claim=claim, result=_result(204)) is None
    row.refresh_from_db()
    assert row.status == "delivered" and row.attempts.count() == 2
    assert CallbackHost.objects.get(host=claim.host).consecutive_failures == 0


@pytest.mark.django_db
def test_a_try_recorded_after_its_lease_was_lost_leaves_the_later_tries_lease(job, settings):
    """The lease ran out and a second try was claimed: the first try's late record keeps the
    second's lease (only the try that holds it gives it back)."""
    settings.CALLBACK_RETRY_DELAYS = [30, 30]
    services.image_job_detect(image_id=job.id)
    row = services.image_job_callback_delivery(image_id=job.id)
    first = outbox.callback_delivery_claim(delivery_id=row.id)
    CallbackDelivery.objects.filter(id=row.id).update(next_attempt_at=timezone.now(), sending_until=None)
    second = outbox.callback_delivery_claim(delivery_id=row.id)
    assert (first.number, second.number) == (1, 2)
    held = CallbackDelivery.objects.get(id=row.id).sending_until
    outbox.callback_delivery_record(claim=first, result=_result(None, error="timed out"))
    row.refresh_from_db()
    assert row.sending_until == held and row.last_error == "timed out"
    outbox.callback_delivery_record(claim=second, result=_result(200))
    row.refresh_from_db()
    assert row.sending_until is None and row.status == "delivered"
    assert sorted(row.attempts.values_list("number", "error")) == [(1, "timed out"), (2, "")]


@pytest.mark.django_db
def test_recording_a_try_of_a_delivery_that_is_gone_says_so(job):
    services.image_job_detect(image_id=job.id)
    row = services.image_job_callback_delivery(image_id=job.id)
    claim = outbox.callback_delivery_claim(delivery_id=row.id)
    CallbackDelivery.objects.filter(id=row.id).delete()
    with pytest.raises(CallbackDelivery.DoesNotExist):
        outbox.callback_delivery_record(claim=claim, result=_result(200))


@pytest.mark.django_db
def test_the_one_statement_start_reads_the_row_as_the_orm_does(job):
    """The started job and its detector version, built from the statement's row, equal what the
    ORM reads back: every column, JSON ones (labels, the version's settings and weights) decoded."""
    from registry.models import DetectorVersion

    Image.objects.filter(id=job.id).update(labels=["face"])
    started = services.image_job_start(image_id=job.id)
    assert started is not None and started.status == "processing" and started.attempts == 1
    reread = Image.objects.select_related("detector_version").get(id=job.id)
    for field in Image._meta.concrete_fields:
        assert getattr(started, field.attname) == getattr(reread, field.attname), field.name
    assert started.labels == ["face"]
    for field in DetectorVersion._meta.concrete_fields:
        assert getattr(started.detector_version, field.attname) == getattr(reread.detector_version, field.attname), field.name
    assert isinstance(started.detector_version.weights, list) and isinstance(started.detector_version.settings, dict)


@pytest.mark.django_db(transaction=True)
def test_two_copies_of_a_message_starting_at_once_start_the_job_once(api_client, s3, monkeypatch, stub_detector):
    """Copies of one message (a re-publish, a redelivery) that start at the same moment: the
    conditional UPDATE lets one move the job to processing; the other finds it processing."""
    monkeypatch.setattr("jobs.services.submission.image_job_enqueue", lambda *, image_id: None)
    job_id = upload(api_client, photo_bytes("astronaut_1face.png"), request_id="copies").json()["id"]
    results, errors = at_once(lambda: services.image_job_start(image_id=job_id), [()] * 4)
    assert errors == []
    assert len(results) == 4 and sum(result is not None for result in results) == 1
    assert Image.objects.get(id=job_id).attempts == 1


@pytest.mark.django_db
def test_the_one_statement_completion_reads_the_row_as_the_orm_does(job, django_capture_on_commit_callbacks, monkeypatch):
    """The completed job built from the UPDATE's row equals the ORM's read of it (every column),
    an empty annotated_key keeps the one stored, and the metrics and listeners get that row."""
    from jobs.services import lifecycle
    from jobs.services.detection import FaceData

    ended = []
    monkeypatch.setattr(lifecycle, "_job_ended_listeners", [])  # this test's listener only
    services.job_ended_listen(ended.append)
    services.image_job_start(image_id=job.id)
    Image.objects.filter(id=job.id).update(annotated_key="annotated/kept.jpg")
    face = FaceData(x=1, y=2, width=3, height=4, confidence=0.9, landmarks={})
    with django_capture_on_commit_callbacks(execute=True):
        assert services.image_job_complete(
            image_id=job.id, faces=[face], model_version="m@1", width=10, height=20, detection_ms=5, detection_cpu_ms=7
        )
    reread = Image.objects.get(id=job.id)
    assert reread.status == "completed" and reread.annotated_key == "annotated/kept.jpg" and reread.face_count == 1
    assert (reread.width, reread.height, reread.detection_ms, reread.detection_cpu_ms, reread.model_version) == (10, 20, 5, 7, "m@1")
    completed = [image for image in ended if image.id == job.id][-1]
    for field in Image._meta.concrete_fields:
        assert getattr(completed, field.attname) == getattr(reread, field.attname), field.name


@pytest.mark.django_db
def test_completing_a_job_that_is_gone_says_so(job):
    services.image_job_start(image_id=job.id)
    Image.objects.filter(id=job.id).delete()
    with pytest.raises(Image.DoesNotExist):
        services.image_job_complete(image_id=job.id, faces=[], model_version="x", width=1, height=1)


def test_the_record_statement_writes_every_column_of_an_attempt():
    """The hand-written INSERT names its columns: a column added to CallbackAttempt must be
    added there too (the database has no defaults for Django's)."""
    from callbacks.models import CallbackAttempt

    sql = outbox._record_statement()
    inserted = sql[sql.index(f"INSERT INTO {CallbackAttempt._meta.db_table}") :].split("(", 1)[1].split(")", 1)[0]
    names = {name.strip() for name in inserted.split(",")}
    assert names == {field.column for field in CallbackAttempt._meta.concrete_fields if not field.primary_key}


@pytest.mark.django_db
def test_without_postgresql_the_same_steps_take_the_orm_paths(job, receiver, monkeypatch):
    """The embedded SQLite stand-in has no data-modifying CTEs: start, completion and record go
    through the ORM (core.rows.hand_written_sql), with the same outcome. Run here on PostgreSQL
    with the vendor check answering otherwise; the fallback smoke runs them on SQLite itself."""
    import core.rows

    monkeypatch.setattr(core.rows.connections["default"], "vendor", "sqlite")
    assert not core.rows.hand_written_sql()
    with CaptureQueriesContext(connection) as captured:
        services.image_job_detect(image_id=job.id)
    assert not any(q.lstrip().startswith(("WITH", "UPDATE api_image SET")) for q in statements(captured))
    job.refresh_from_db()
    assert job.status == "completed" and job.attempts == 1 and job.annotated_key and job.faces.count() == 1
    row = services.image_job_callback_delivery(image_id=job.id)
    claim = outbox.callback_delivery_claim(delivery_id=row.id)
    assert outbox.callback_delivery_record(claim=claim, result=_result(200)) is None
    row.refresh_from_db()
    assert row.status == "delivered" and row.sending_until is None and row.attempts.get().status_code == 200
