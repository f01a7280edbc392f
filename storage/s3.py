"""Object storage through the MinIO client: the one place that talks S3.

Any S3-compatible server works (MinIO in compose, SeaweedFS locally and in tests). Timeouts are
explicit: the client's default would wait minutes on a dead server.
"""

import datetime as dt
import functools
import io
import logging
import os
import socket
import threading
from collections.abc import Iterator

import urllib3
from django.conf import settings
from minio import Minio
from minio.error import S3Error

from core import metrics

logger = logging.getLogger(__name__)


class StorageError(Exception):
    """The storage server failed or could not be reached: transient, worth a retry. ``reason``
    says which failure it was, in one of STORAGE_ERROR_REASONS."""

    def __init__(self, message: str = "", *, reason: str = "other") -> None:
        super().__init__(message)
        self.reason = reason


class ObjectNotFound(StorageError):
    """The object is not in the bucket."""

    def __init__(self, message: str = "") -> None:
        super().__init__(message, reason="not_found")


# Why a call to the store failed: the log says it and fda_storage_errors_total counts it by these
# words only (a bounded label). A full SeaweedFS answers 500 InternalError, which is
# "server_error": only MinIO and S3 name a full store ("full").
STORAGE_ERROR_REASONS = ("unreachable", "timeout", "denied", "no_bucket", "full", "server_error", "client_error", "other")
_DENIED_CODES = {"AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccountProblem"}
_FULL_CODES = {"XMinioStorageFull", "InsufficientStorage", "XMinioAdminBucketQuotaExceeded", "QuotaExceeded"}


def _client(endpoint: str) -> Minio:
    # One client per process, shared by its threads (the Minio client is thread-safe): its pool
    # keeps up to S3_POOL_CONNECTIONS connections open between requests, one per thread that
    # talks to S3 at once (a gunicorn worker's WEB_THREADS); a thread finding none free opens one
    # more for the request rather than wait.
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=settings.S3_CONNECT_TIMEOUT, read=settings.S3_READ_TIMEOUT),
        retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=(500, 502, 503, 504)),
        maxsize=settings.S3_POOL_CONNECTIONS,
    )
    # The region is given so that the client never makes a network call to discover it (which
    # matters for presigning against a public endpoint the server itself may not reach).
    return Minio(
        endpoint,
        access_key=settings.S3_ACCESS_KEY,
        secret_key=settings.S3_SECRET_KEY,
        secure=settings.S3_SECURE,
        region=settings.S3_REGION,
        http_client=http,
    )


# Threads of one process asking for the first time make one client, not one each.
_clients_lock = threading.Lock()


@functools.cache
def _cached_client(endpoint: str) -> Minio:
    return _client(endpoint)


def _shared_client(endpoint: str) -> Minio:
    with _clients_lock:
        return _cached_client(endpoint)


def client() -> Minio:
    return _shared_client(settings.S3_ENDPOINT)


def _public_client() -> Minio:
    return _shared_client(settings.S3_PUBLIC_ENDPOINT)


def reset_clients() -> None:
    """Forget the cached clients (after a settings change in tests)."""
    with _clients_lock:
        _cached_client.cache_clear()


def storage_error_reason(exc: BaseException) -> str:
    """Which of STORAGE_ERROR_REASONS an exception of the S3 client or its transport is."""
    if isinstance(exc, S3Error):
        if exc.code in _DENIED_CODES:
            return "denied"
        if exc.code == "NoSuchBucket":
            return "no_bucket"
        if exc.code in _FULL_CODES:
            return "full"
        status = getattr(exc.response, "status", None) or 0
        return "server_error" if status >= 500 or exc.code in ("InternalError", "ServiceUnavailable", "SlowDown") else "client_error"
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        # Retries used up: what the last try met.
        if isinstance(exc.reason, urllib3.exceptions.ResponseError):
            return "server_error"  # "too many 5xx error responses"
        return storage_error_reason(exc.reason)
    # Before the timeouts: urllib3's NewConnectionError (refused, no route) is a ConnectTimeoutError.
    if isinstance(exc, (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ProtocolError, ConnectionError)):
        return "unreachable"
    if isinstance(exc, (urllib3.exceptions.TimeoutError, socket.timeout, TimeoutError)):
        return "timeout"
    if isinstance(exc, (urllib3.exceptions.HTTPError, OSError)):
        return "unreachable"
    return "other"


def _wrap(exc: Exception, key: str = "", *, operation: str) -> StorageError:
    """The StorageError for a failed call; a failure of the store itself (not a missing object)
    is logged with its reason and counted in fda_storage_errors_total."""
    if isinstance(exc, S3Error) and exc.code in ("NoSuchKey", "NoSuchObject"):
        return ObjectNotFound(key)
    reason = storage_error_reason(exc)
    metrics.storage_error(operation=operation, reason=reason)
    logger.warning("storage %s failed (%s)%s: %s: %s", operation, reason, f" for {key}" if key else "", type(exc).__name__, exc)
    return StorageError(f"{type(exc).__name__}: {exc}", reason=reason)


_TRANSPORT_ERRORS = (S3Error, urllib3.exceptions.HTTPError, OSError, ValueError)


def storage_ensure_bucket() -> bool:
    """Create the bucket if it is missing. Returns True when it was created."""
    bucket = settings.S3_BUCKET
    try:
        if client().bucket_exists(bucket):
            return False
        client().make_bucket(bucket)
    except _TRANSPORT_ERRORS as exc:
        raise _wrap(exc, operation="bucket") from exc
    logger.info("created bucket %s", bucket)
    return True


def storage_put(*, key: str, data: bytes | io.IOBase, length: int, content_type: str) -> None:
    stream = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        client().put_object(settings.S3_BUCKET, key, stream, length, content_type=content_type)
    except _TRANSPORT_ERRORS as exc:
        raise _wrap(exc, key, operation="put") from exc


def storage_get(*, key: str) -> bytes:
    response = None
    try:
        response = client().get_object(settings.S3_BUCKET, key)
        return response.read()
    except _TRANSPORT_ERRORS as exc:
        raise _wrap(exc, key, operation="get") from exc
    finally:
        if response is not None:
            response.close()
            response.release_conn()


def storage_stream(*, key: str, chunk_size: int = 64 * 1024) -> Iterator[bytes]:
    """Open the object now (so a missing one raises here) and yield it in chunks."""
    try:
        response = client().get_object(settings.S3_BUCKET, key)
    except _TRANSPORT_ERRORS as exc:
        raise _wrap(exc, key, operation="get") from exc

    def chunks() -> Iterator[bytes]:
        try:
            yield from response.stream(chunk_size)
        finally:
            response.close()
            response.release_conn()

    return chunks()


def storage_delete(*, key: str) -> None:
    try:
        client().remove_object(settings.S3_BUCKET, key)
    except _TRANSPORT_ERRORS as exc:
        raise _wrap(exc, key, operation="delete") from exc


def storage_list(*, prefix: str = "") -> list[str]:
    try:
        return [o.object_name for o in client().list_objects(settings.S3_BUCKET, prefix=prefix, recursive=True)]
    except _TRANSPORT_ERRORS as exc:
        raise _wrap(exc, operation="list") from exc


def storage_presigned_url(*, key: str) -> str:
    """A short-lived GET URL on the public endpoint (S3_PUBLIC_ENDPOINT)."""
    return _public_client().presigned_get_object(settings.S3_BUCKET, key, expires=dt.timedelta(seconds=settings.S3_PRESIGN_SECONDS))


def storage_ping() -> None:
    """Raise StorageError unless the server answers and the bucket exists."""
    try:
        exists = client().bucket_exists(settings.S3_BUCKET)
    except _TRANSPORT_ERRORS as exc:
        raise _wrap(exc, operation="bucket") from exc
    if not exists:
        raise StorageError(f"bucket {settings.S3_BUCKET} does not exist", reason="no_bucket")


# Where the write check puts its object: outside originals/ and annotated/, which retention and
# lifecycle rules work on.
HEALTH_KEY_PREFIX = "_health/"


def storage_check_write() -> None:
    """Raise StorageError (with its reason) unless a small object can be written to the bucket
    and deleted again: what a full, read-only or refusing store fails, while it may still answer
    reads. One key per process, so that probes of many processes never delete each other's.
    The bucket is checked first: some servers (SeaweedFS) make a missing bucket on a write."""
    storage_ping()
    key = f"{HEALTH_KEY_PREFIX}{socket.gethostname()}-{os.getpid()}"
    storage_put(key=key, data=b"ok", length=2, content_type="text/plain")
    storage_delete(key=key)


def storage_size(*, key: str) -> int:
    """The object's size in bytes (a HEAD request: nothing is downloaded). Raises ObjectNotFound."""
    try:
        return int(client().stat_object(settings.S3_BUCKET, key).size)
    except _TRANSPORT_ERRORS as exc:
        raise _wrap(exc, key, operation="stat") from exc
