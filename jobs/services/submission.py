"""The submission of a job: checked, stored, recorded, then published after commit (detect ->
deliver), idempotently by request_id."""

import datetime as dt
import functools
import logging
import uuid
from collections.abc import Sequence
from contextlib import nullcontext
from typing import IO

from celery import current_app
from celery.utils import uuid as task_uuid
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.utils import timezone

from callbacks.urlpolicy import UrlRefused
from clients.models import ApiClient
from core import rows
from core.errors import Conflict, DomainError, TooLarge, Unavailable, UnsupportedFormat
from core.logging import log_context_get

# The label rule; api/serializers.py reads it from here (api does not import detection).
from detection.labels import LABEL_PATTERN, MAX_LABELS, label_valid, labels_unique
from registry.services import detector_version_for_job
from rollouts.models import Variant
from rollouts.services import rollout_route, shadow_sampled, shadow_variant
from storage import s3 as storage

from ..fetch import image_url_check
from ..imaging import ImageRejected, image_probe
from ..keys import object_key
from ..models import Batch, Image, JobStatus, ShadowRun

logger = logging.getLogger(__name__)


# The Celery tasks (workers/tasks.py) that run a job, by name: services never import task modules.
DETECT_TASK = "workers.tasks.detect_faces"
DELIVER_RESULT_TASK = "workers.tasks.deliver_result"


# --- Submission -------------------------------------------------------------------------------


def image_job_create(
    *,
    client: ApiClient,
    upload: IO[bytes] | None = None,
    size: int = 0,
    request_id: str,
    callback_url: str = "",
    filename: str = "",
    model_version: str = "",
    cohort: str = "",
    labels: Sequence[str] = (),
    image_url: str | None = None,
    expires_at: dt.datetime | None = None,
    batch: Batch | None = None,
) -> tuple[Image, bool]:
    """Accept an upload: check the image, store it, record a queued job, and enqueue detection
    once the row is committed. Returns (job, created).

    Submission is idempotent per client and request_id: the same photo, callback_url, cohort and
    labels again return the existing job (created False); a different one under a used
    request_id is a 409. Raises a DomainError (field "image") for an unacceptable file. A refused
    request leaves no row and no object behind. ``model_version`` (a version id) pins the
    detector; by default the live rollout routes the job by ``cohort`` (else by its client) to the
    baseline or the candidate, and outside a rollout the active version is pinned. ``labels``:
    keep only detections with these labels (empty: all); each must be one the pinned version can
    return (field "labels").

    ``image_url`` instead of ``upload``: nothing is fetched now; the URL is checked (field
    "image_url", code image_url_refused) and recorded, and the detect task fetches it first
    (jobs/services/fetching.py). A repeat is then told by its URL instead of its bytes.
    ``expires_at``: a job not started by then ends ``expired``. ``batch``: the batch it is an
    item of.
    """
    if (upload is None) == (image_url is None):
        raise DomainError("invalid", "Give exactly one of image and image_url.", field="image")
    if image_url is not None:
        return _image_job_create_by_url(
            client=client,
            image_url=image_url,
            request_id=request_id,
            callback_url=callback_url,
            model_version=model_version,
            cohort=cohort,
            labels=labels,
            expires_at=expires_at,
            batch=batch,
        )
    labels = _labels_asked(labels)
    version, route = _version_routed(client=client, model_version=model_version, cohort=cohort)
    if size > settings.MAX_UPLOAD_BYTES:
        raise TooLarge(
            "file_too_large",
            f"The upload is {size} bytes; at most {settings.MAX_UPLOAD_BYTES} bytes are accepted.",
            field="image",
        )
    try:
        info = image_probe(upload)
    except ImageRejected as exc:
        kind = {"image_too_large": TooLarge, "unsupported_image_format": UnsupportedFormat}.get(exc.code, DomainError)
        raise kind(exc.code, exc.message, field="image") from exc

    # Most uploads are new: a query without columns first, the whole row only for a repeat.
    existing = Image.objects.filter(client=client, request_id=request_id).first() if _is_repeat(client.id, request_id) else None
    if existing is not None and existing.status == JobStatus.DELETED:
        # The job was erased: its request_id stays spent, so a replayed upload never stores the
        # photo again. The tombstone is the answer, whatever was sent (docs/security.md).
        return existing, False
    if existing is not None:
        return _same_submission(
            existing, sha256=info.sha256, callback_url=callback_url, model_version=model_version, cohort=cohort, labels=labels
        ), False
    # Checked against the version chosen above (asked for, routed, or active): the one that runs.
    _labels_check(version, labels)

    image_id = uuid.uuid4()
    key = object_key("originals", image_id, info.extension)
    try:
        storage.storage_put(key=key, data=upload, length=size, content_type=info.content_type)
    except storage.StorageError as exc:
        logger.error("storing upload for %s failed: %s", request_id, exc)
        raise Unavailable("storage_unavailable", "The image could not be stored; try again.") from exc

    fields = {
        # For operators' eyes only; control characters would garble the admin and logs.
        "original_filename": "".join(ch for ch in filename if ch.isprintable())[:255],
        "original_key": key,
        "original_content_type": info.content_type,
        "original_size": size,
        "original_sha256": info.sha256,
        "width": info.width,
        "height": info.height,
        "expires_at": expires_at,
        "batch": batch,
    }
    try:
        image, created = _image_row_create(
            image_id=image_id,
            client=client,
            request_id=request_id,
            callback_url=callback_url,
            version=version,
            route=route,
            cohort=cohort,
            labels=labels,
            fields=fields,
        )
    except IntegrityError:
        # The same request_id raced in from a concurrent request and won.
        _delete_quietly(key)
        existing = Image.objects.get(client=client, request_id=request_id)
        return _same_submission(
            existing, sha256=info.sha256, callback_url=callback_url, model_version=model_version, cohort=cohort, labels=labels
        ), False
    except Exception:
        # No row, so no object either.
        _delete_quietly(key)
        raise
    return image, created


def _version_routed(*, client: ApiClient, model_version: str, cohort: str):
    """(version, route): the version asked for by name (no rollout decides, and the job counts
    in no rollout's figures), else the live rollout's choice by cohort, else the active one."""
    if model_version:
        return detector_version_for_job(requested=model_version), None
    route = rollout_route(client_id=client.id, cohort=cohort)
    return (route.version if route is not None else detector_version_for_job(requested=None)), route


def _image_job_create_by_url(
    *,
    client: ApiClient,
    image_url: str,
    request_id: str,
    callback_url: str,
    model_version: str,
    cohort: str,
    labels: Sequence[str],
    expires_at: dt.datetime | None,
    batch: Batch | None,
) -> tuple[Image, bool]:
    """image_job_create for a photo by URL: checked, recorded, published; fetched by the worker."""
    labels = _labels_asked(labels)
    version, route = _version_routed(client=client, model_version=model_version, cohort=cohort)
    existing = Image.objects.filter(client=client, request_id=request_id).first()
    if existing is not None and existing.status == JobStatus.DELETED:
        return existing, False
    if existing is not None:
        return _same_submission(
            existing, image_url=image_url, callback_url=callback_url, model_version=model_version, cohort=cohort, labels=labels
        ), False
    try:
        image_url_check(image_url)
    except UrlRefused as exc:
        raise DomainError(exc.code, str(exc), field="image_url") from exc
    _labels_check(version, labels)
    fields = {
        "image_url": image_url,
        # Set by the fetch (the key an upload gets, with the extension the content has).
        "original_key": "",
        "original_content_type": "",
        "original_size": 0,
        "original_sha256": "",
        "expires_at": expires_at,
        "batch": batch,
    }
    try:
        return _image_row_create(
            image_id=uuid.uuid4(),
            client=client,
            request_id=request_id,
            callback_url=callback_url,
            version=version,
            route=route,
            cohort=cohort,
            labels=labels,
            fields=fields,
        )
    except IntegrityError:
        existing = Image.objects.get(client=client, request_id=request_id)
        return _same_submission(
            existing, image_url=image_url, callback_url=callback_url, model_version=model_version, cohort=cohort, labels=labels
        ), False


def _image_row_create(*, image_id, client, request_id, callback_url, version, route, cohort, labels, fields) -> tuple[Image, bool]:
    """The job's row (and its shadow run), published once committed. Raises IntegrityError when
    the request_id raced in from a concurrent request."""
    # A transaction where the job is routed (the rollout's share lock and the shadow run commit
    # with it) or a caller's transaction holds (a savepoint, for the IntegrityError); else the
    # INSERT commits by itself, with no BEGIN and COMMIT round trips, and on_commit runs at once.
    atomic = transaction.atomic() if route is not None or connection.in_atomic_block else nullcontext()
    with atomic:
        if route is not None:
            # Routed again, under a share lock of the rollout row held until this commits:
            # a rollback that committed since the first read is seen (the job goes to the
            # active version, outside the rollout), and one that comes now waits for this job.
            route = rollout_route(client_id=client.id, cohort=cohort, locked=True)
            routed = route.version if route is not None else detector_version_for_job(requested=None)
            if routed.id != version.id:
                version = routed
                _labels_check(version, labels)
        image = Image(
            id=image_id,
            client=client,
            request_id=request_id,
            # The X-Request-ID of the request making it (api.middleware): the workers' log
            # lines about this job carry it too.
            http_request_id=log_context_get("http_request_id"),
            callback_url=callback_url,
            detector_version=version,
            model_version=version.label,
            rollout=route.rollout if route else None,
            variant=route.variant if route else "",
            cohort=cohort,
            labels=labels,
            # For operators' eyes only (original_filename); control characters are dropped
            # above as they would garble the admin and logs.
            **fields,
        )
        _image_insert(image)
        if route is not None:
            _shadow_run_create(image, route.rollout, served=route.variant)
        # The worker must never see an id whose row is not committed.
        transaction.on_commit(lambda: image_job_enqueue(image_id=image_id))
    return image, True


# The upload's two statements that are the same every time, built once per process: the ORM
# compiled each again for every upload, about a millisecond of the API's CPU apiece against a
# tenth of one for the round trip (bench/submit.py --parts). Plain SQL, for any database.


@functools.cache
def _repeat_statement() -> str:
    quote = connection.ops.quote_name
    client, request_id = (quote(Image._meta.get_field(name).column) for name in ("client", "request_id"))
    return f"SELECT 1 FROM {quote(Image._meta.db_table)} WHERE {client} = %s AND {request_id} = %s LIMIT 1"


@functools.cache
def _insert_statement() -> str:
    quote = connection.ops.quote_name
    every = rows.fields(Image)
    names, values = ", ".join(quote(field.column) for field in every), ", ".join(["%s"] * len(every))
    return f"INSERT INTO {quote(Image._meta.db_table)} ({names}) VALUES ({values})"


def _is_repeat(client_id: int, request_id: str) -> bool:
    """Whether the client has a job with this request_id (the ORM's exists(), prebuilt)."""
    with connection.cursor() as cursor:
        cursor.execute(_repeat_statement(), [client_id, request_id])
        return cursor.fetchone() is not None


def _image_insert(image: Image) -> None:
    """INSERT ``image``, a new job with its id set, as ``Image.objects.create`` would: every
    column, each field's pre_save (created_at, updated_at) and database preparation (JSON,
    UUIDs). The model's save signals are not sent: nothing listens to them for Image, and
    tests/test_front_door.py fails when something starts to. A taken request_id raises
    IntegrityError, as the ORM's would."""
    values = [field.get_db_prep_save(field.pre_save(image, True), connection) for field in rows.fields(Image)]
    # As the ORM's save: a failure inside a transaction marks it for rollback.
    with transaction.mark_for_rollback_on_error(), connection.cursor() as cursor:
        cursor.execute(_insert_statement(), values)
    image._state.adding = False
    image._state.db = connection.alias


def _same_submission(
    existing: Image,
    *,
    sha256: str = "",
    image_url: str = "",
    callback_url: str,
    model_version: str,
    cohort: str,
    labels: Sequence[str],
) -> Image:
    other_version = bool(model_version) and model_version != existing.detector_version_id
    # The same labels in any order; none asked is "every label", a choice of its own.
    other_labels = set(labels) != set(existing.labels)
    # A photo by URL is the same submission when the URL is (its bytes are not known at submit
    # time); an upload when its bytes are. One by URL and one uploaded never are.
    other_photo = existing.image_url != image_url if (image_url or existing.image_url) else existing.original_sha256 != sha256
    if other_photo or existing.callback_url != callback_url or other_version or existing.cohort != cohort or other_labels:
        raise Conflict(
            "request_id_conflict",
            "This request_id was already used for a different image, callback_url, model_version, cohort or labels.",
            field="request_id",
        )
    return existing


def _labels_asked(labels: Sequence[str]) -> list[str]:
    """The labels an upload asks to keep: label names, without repeats (first one first), at
    most MAX_LABELS."""
    labels = labels_unique(labels)
    bad = [label for label in labels if not label_valid(label)]
    if bad:
        raise DomainError("invalid", f"{bad[0]!r} is not a label name ({LABEL_PATTERN}).", field="labels")
    if len(labels) > MAX_LABELS:
        raise DomainError("too_many_labels", f"At most {MAX_LABELS} labels may be asked for; {len(labels)} were.", field="labels")
    return labels


def _labels_check(version, labels: Sequence[str]) -> None:
    """Refuse labels the job's version cannot return: asking for them would always come back empty."""
    unknown = [label for label in labels if label not in version.labels]
    if unknown:
        raise DomainError(
            "unsupported_label",
            f"{version.id} does not detect {', '.join(unknown)}; it returns {', '.join(version.labels)}.",
            field="labels",
        )


def _shadow_run_create(image: Image, rollout, *, served: str) -> ShadowRun | None:
    """The job's shadow run, when the rollout copies jobs served by ``served`` and samples this
    one: made with the job (same transaction), published once the job is over."""
    side = shadow_variant(rollout, served)
    if side is None or not shadow_sampled(rollout, image.id):
        return None
    version_id = rollout.candidate_id if side == Variant.CANDIDATE else rollout.baseline_id
    return ShadowRun.objects.create(job=image, rollout=rollout, detector_version_id=version_id, variant=side)


def detect_route(*, batch: bool) -> dict[str, str]:
    """Where a job's detect task is published: a batch item on the batch items' queue (all
    three: a queue alone would be merged with the task's route, whose exchange and routing key
    lead to the detect queue), any other job by CELERY_TASK_ROUTES."""
    if not batch:
        return {}
    queue = settings.CELERY_QUEUE_DETECT_BATCH
    return {"queue": queue, "exchange": queue, "routing_key": queue}


def image_job_enqueue(*, image_id: uuid.UUID, batch: bool = False) -> bool:
    """Publish the detect -> deliver chain for a committed job (a batch item's on the batch
    queue) and record it. A broker outage is logged, not raised: the job stays queued,
    unpublished, for the sweeper to publish."""
    try:
        _publish_chain(image_id, **detect_route(batch=batch))
    except Exception:
        logger.exception("could not enqueue job %s; the sweeper will retry", image_id)
        return False
    _record_published(uuid.UUID(str(image_id)))
    return True


def _record_published(image_id: uuid.UUID) -> None:
    """Record the publish without waiting for the write-ahead log to reach the disk (PostgreSQL;
    the next flush, a fraction of a second later, takes it): a crash may lose the record at no
    cost, the sweeper publishes the job again and its worker skips the copy. An upload waits for
    one disk flush (its job's), not two. Inside a caller's transaction, whose own commit must
    wait, it is a plain UPDATE."""
    now = timezone.now()
    if connection.vendor == "postgresql" and not connection.in_atomic_block:
        # One round trip instead of four (BEGIN, SET LOCAL, UPDATE, COMMIT): the statements of
        # one simple query run as one transaction, to which SET LOCAL applies. Literals, not
        # parameters (a driver that binds parameters on the server refuses several statements);
        # both values are made here, a UUID and a timestamp.
        table = connection.ops.quote_name(Image._meta.db_table)
        stamp = now.isoformat()
        with connection.cursor() as cursor:
            cursor.execute(
                "SET LOCAL synchronous_commit TO OFF; "
                f"UPDATE {table} SET enqueued_at = '{stamp}'::timestamptz, enqueue_count = enqueue_count + 1, "
                f"updated_at = '{stamp}'::timestamptz WHERE id = '{image_id}'::uuid"
            )
        return
    Image.objects.filter(id=image_id).update(enqueued_at=now, enqueue_count=F("enqueue_count") + 1, updated_at=now)


def _publish_chain(image_id: uuid.UUID, **route: str) -> None:
    """detect -> deliver for one job, published by task name (routed to their queues by
    CELERY_TASK_ROUTES): one message to the detect queue carrying the delivery as its chain.

    The message is the one ``(signature(detect) | signature(deliver)).apply_async()`` sends,
    built without the canvas (about a fifth of the publish's CPU in the API): the delivery as the
    dict the chain would serialize it to (its task id and reply_to set, immutable), and the detect
    task's options as the chain passes them. ignore_result on both: nothing reads either task's
    return value (the job lives in the database), and without it the result backend (Redis)
    subscribes to every published task and unsubscribes again, and stores every delivery's result.
    ``route`` (queue, exchange, routing_key) sends the detect task elsewhere than its
    CELERY_TASK_ROUTES route: batch items go to their own queue (jobs/services/batches.py).
    """
    app = current_app
    job = str(image_id)
    deliver = {
        "task": DELIVER_RESULT_TASK,
        "args": [job],
        "kwargs": {},
        "options": {"task_id": task_uuid(), "reply_to": app.thread_oid, "ignore_result": True},
        "subtask_type": None,
        "immutable": True,
    }
    app.send_task(
        DETECT_TASK, args=(job,), kwargs={}, chain=[deliver], task_id=task_uuid(), reply_to=app.thread_oid, ignore_result=True, **route
    )


def _delete_quietly(key: str) -> None:
    try:
        storage.storage_delete(key=key)
    except storage.StorageError:
        logger.exception("could not delete orphan object %s", key)
