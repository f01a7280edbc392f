"""One error shape for every 4xx and 5xx: ``{"error": {"code", "message", "field"}}``."""

import logging
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied, RequestDataTooBig, SuspiciousOperation, TooManyFieldsSent
from django.db import InterfaceError, OperationalError
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import exception_handler as drf_exception_handler

from core import metrics
from core.errors import Conflict, DomainError, Gone, NotFound, TooLarge, Unavailable, UnsupportedFormat

logger = logging.getLogger(__name__)

# The HTTP status of each kind of domain error (core/errors.py); any other DomainError is a 400.
DOMAIN_STATUS = {
    NotFound: status.HTTP_404_NOT_FOUND,
    Conflict: status.HTTP_409_CONFLICT,
    Gone: status.HTTP_410_GONE,
    TooLarge: status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
    UnsupportedFormat: status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
    Unavailable: status.HTTP_503_SERVICE_UNAVAILABLE,
}


class ApiError(DomainError):
    """An error of the HTTP layer itself (a view's own check), with its status code. Services
    raise core.errors kinds instead and never name a status code."""

    def __init__(self, code: str, message: str, *, field: str | None = None, status_code: int = 400):
        super().__init__(code, message, field=field)
        self.status_code = status_code


def domain_error_status(exc: DomainError) -> int:
    if isinstance(exc, ApiError):
        return exc.status_code
    return next((code for kind, code in DOMAIN_STATUS.items() if isinstance(exc, kind)), status.HTTP_400_BAD_REQUEST)


def error_body(code: str, message: str, field: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "field": field, **extra}}


def _first_field_error(detail: Any) -> tuple[str | None, Any]:
    """The first (field, ErrorDetail) of a DRF validation error; our serializers are flat."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            errors = value if isinstance(value, list) else [value]
            if errors:
                return (None if key == api_settings.NON_FIELD_ERRORS_KEY else key), errors[0]
    if isinstance(detail, list) and detail:
        return None, detail[0]
    return None, detail


# The database cannot be reached (stopped, restarting, its connection broken): the request can
# be tried again as it is, so a 503, never a 500 with the driver's text.
DATABASE_UNAVAILABLE = (OperationalError, InterfaceError)


def database_unavailable_body() -> dict[str, Any]:
    return error_body("database_unavailable", "The service cannot reach its database; try again shortly.")


def exception_handler(exc: Exception, context: dict) -> Response | None:
    response = _error_response(exc, context)
    _count_refused_upload(context, response)
    if response is not None and response.status_code == status.HTTP_503_SERVICE_UNAVAILABLE:
        # When to try again: a client (and a proxy) waits this long instead of hammering.
        response.setdefault("Retry-After", str(settings.UNAVAILABLE_RETRY_AFTER))
    return response


def _count_refused_upload(context: dict, response: Response | None) -> None:
    # Uploads only: why clients' photos are turned away (size, format, key, rate) is the figure
    # operators watch; a 4xx elsewhere is a client's own business.
    request = context.get("request")
    if response is None or request is None or request.method != "POST" or not 400 <= response.status_code < 500:
        return
    match = getattr(request, "resolver_match", None)
    if match is not None and match.url_name == "image-collection":
        metrics.upload_refused(reason=response.data["error"]["code"])


def _error_response(exc: Exception, context: dict) -> Response | None:
    if isinstance(exc, DATABASE_UNAVAILABLE):
        # The operators get the driver's words; the client a fixed sentence.
        logger.warning("database unavailable: %s", exc)
        return Response(database_unavailable_body(), status=status.HTTP_503_SERVICE_UNAVAILABLE)
    if isinstance(exc, DomainError):
        return Response(error_body(exc.code, exc.message, exc.field), status=domain_error_status(exc))
    if isinstance(exc, RequestDataTooBig):
        return Response(error_body("request_too_large", "The request body is too large."), status=413)
    if isinstance(exc, (SuspiciousOperation, TooManyFieldsSent)):
        return Response(error_body("bad_request", str(exc) or "Malformed request."), status=400)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()

    response = drf_exception_handler(exc, context)
    if response is None:
        return None  # unexpected: Django logs it and answers 500 (see api.views.server_error)

    if isinstance(exc, exceptions.ValidationError):
        field, detail = _first_field_error(exc.detail)
        code = getattr(detail, "code", None) or "invalid"
        response.data = error_body(str(code), str(detail), field, details=exc.detail)
    else:
        detail = exc.detail if isinstance(exc, exceptions.APIException) else str(exc)
        code = getattr(detail, "code", None) or getattr(exc, "default_code", "error")
        response.data = error_body(str(code), str(detail))
    return response
