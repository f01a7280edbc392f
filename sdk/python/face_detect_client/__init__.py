"""A Python client for face_detect_api: submit photos (uploads, URLs, batches), wait for their
jobs, cancel them, stream a batch's results, and verify the service's signed callbacks."""

__version__ = "0.1.0"

from .client import Client  # noqa: E402
from .errors import (  # noqa: E402
    ApiError,
    AuthenticationError,
    BadRequest,
    CallbackVerificationError,
    Conflict,
    FaceDetectError,
    Gone,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    RateLimited,
    ServerError,
    ServiceUnavailable,
    TransportError,
    UnsupportedMediaType,
    WaitTimeout,
)
from .models import TERMINAL_STATUSES, Batch, BatchItem, Job, JobError  # noqa: E402
from .webhooks import verify_callback  # noqa: E402

__all__ = [
    "TERMINAL_STATUSES",
    "ApiError",
    "AuthenticationError",
    "BadRequest",
    "Batch",
    "BatchItem",
    "CallbackVerificationError",
    "Client",
    "Conflict",
    "FaceDetectError",
    "Gone",
    "Job",
    "JobError",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "RateLimited",
    "ServerError",
    "ServiceUnavailable",
    "TransportError",
    "UnsupportedMediaType",
    "WaitTimeout",
    "verify_callback",
]
