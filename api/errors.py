"""One error shape for every 4xx and 5xx: ``{"error": {"code", "message", "field"}}``."""

import logging
from typing import Any

from django.core.exceptions import PermissionDenied, RequestDataTooBig, SuspiciousOperation, TooManyFieldsSent
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import exception_handler as drf_exception_handler

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """A domain error the client can act on. Services raise it; the handler below renders it."""

    status_code = status.HTTP_400_BAD_REQUEST

    def __init__(self, code: str, message: str, *, field: str | None = None, status_code: int | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        if status_code is not None:
            self.status_code = status_code


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


def exception_handler(exc: Exception, context: dict) -> Response | None:
    if isinstance(exc, ApiError):
        return Response(error_body(exc.code, exc.message, exc.field), status=exc.status_code)
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
