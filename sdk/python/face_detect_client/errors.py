"""The client's exceptions. Every error the API answers becomes an ``ApiError`` (a subclass per
HTTP status) carrying the API's ``{"error": {"code", "message", "field"}}``."""

from __future__ import annotations

from typing import Any


class FaceDetectError(Exception):
    """Base class of everything this package raises."""


class TransportError(FaceDetectError):
    """The service could not be reached, or the connection broke (httpx's error is the cause)."""


class ApiError(FaceDetectError):
    """The API answered with an error status.

    ``code`` and ``field`` are the API's own (``error.code``, ``error.field``: the field to fix,
    such as ``image_url`` or ``items[3].image_url``; None when the error is not about one field).
    ``retry_after`` is the Retry-After header in seconds, when the answer had one.
    """

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        details: Any = None,
        retry_after: float | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(f"{status_code} {code}: {message}" + (f" (field: {field})" if field else ""))
        self.status_code = status_code
        self.code = code
        self.message = message
        self.field = field
        self.details = details
        self.retry_after = retry_after
        # The X-Request-ID the service answered with: quote it to the operators.
        self.request_id = request_id


class BadRequest(ApiError):
    """400: invalid input; ``field`` names it."""


class AuthenticationError(ApiError):
    """401: no API key, or an invalid or revoked one."""


class PermissionDenied(ApiError):
    """403: the key may not do this (an operator's route)."""


class NotFound(ApiError):
    """404: no such job or batch for this client."""


class Conflict(ApiError):
    """409: e.g. ``job_already_started`` or ``job_finished`` on cancel."""


class Gone(ApiError):
    """410: deleted after the retention period, or erased on request."""


class PayloadTooLarge(ApiError):
    """413: the upload or the image is too large."""


class UnsupportedMediaType(ApiError):
    """415: an image format the service does not accept."""


class RateLimited(ApiError):
    """429: the key's rate limit, still reached after the client's retries."""


class ServerError(ApiError):
    """5xx other than 503."""


class ServiceUnavailable(ServerError):
    """503: a dependency is down, still after the client's retries."""


STATUS_ERRORS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: AuthenticationError,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    410: Gone,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    429: RateLimited,
    503: ServiceUnavailable,
}


def error_class(status_code: int) -> type[ApiError]:
    if status_code in STATUS_ERRORS:
        return STATUS_ERRORS[status_code]
    return ServerError if status_code >= 500 else ApiError


class WaitTimeout(FaceDetectError):
    """``Client.wait`` (or ``wait_batch``) reached its deadline before the job (the batch) ended;
    ``job`` is the last state seen: a Job, or a Batch from ``wait_batch``."""

    def __init__(self, job: Any, timeout: float) -> None:
        super().__init__(f"{type(job).__name__.lower()} {job.id} still {job.status} after {timeout:g} s")
        self.job = job
        self.timeout = timeout


class CallbackVerificationError(FaceDetectError):
    """A callback's signature, timestamp or headers are not valid: do not trust its body."""
