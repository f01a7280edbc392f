"""The request id and the access log.

Every answer carries ``X-Request-ID``: the client's own when it sent a sane one, else one made
up here. Every log line written while the request is handled carries it as ``http_request_id``,
and so does the job the request makes (jobs.services.image_job_create stores it on the row; the
Celery tasks get it as a message header: workers/tasklogs.py), so one id finds the request, its
job and its callback in the logs of the API and of the workers.
"""

import logging
import re
import time
import uuid

from django.utils.log import log_response

from core import statecache
from core.logging import log_context

HEADER = "X-Request-ID"
MAX_LENGTH = 128
# Printable ASCII with no space at either end: anything else (control characters, a line break
# to forge log lines, an 8 KB blob) is replaced, never cleaned up and kept.
_SANE = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?")

access_log = logging.getLogger("access")


def request_id_from(value: str | None) -> str:
    """The client's X-Request-ID when it is sane (printable, at most 128 characters), else a new
    one (32 hex digits)."""
    if value and len(value) <= MAX_LENGTH and _SANE.fullmatch(value):
        return value
    return uuid.uuid4().hex


class RequestIdMiddleware:
    """First in MIDDLEWARE, so that every answer gets the header: the views', the other
    middleware's (redirects, 404s, 500s: Django turns exceptions into responses inside the
    chain), the admin's, the probes'. Writes the access log: one line per request."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        request_id = request_id_from(request.META.get("HTTP_X_REQUEST_ID"))
        request.http_request_id = request_id
        started = time.monotonic()
        with log_context(http_request_id=request_id):
            response = self.get_response(request)
            response[HEADER] = request_id
            if response.status_code >= 400:
                # Django logs a 4xx/5xx answer ("Not Found: /x") after the whole chain, where
                # the request's context is gone; logged here it carries http_request_id (and
                # is marked logged, so Django does not write it twice).
                log_response("%s: %s", response.reason_phrase, request.path, response=response, request=request)
            # Until the answer is ready: a streamed body is still being sent after this line.
            duration_ms = round((time.monotonic() - started) * 1000, 1)
            access_log.info(
                "%s %s %s %sms",
                request.method,
                request.path,
                response.status_code,
                duration_ms,
                extra={
                    "method": request.method,
                    "path": request.path,
                    "status": response.status_code,
                    "duration_ms": duration_ms,
                    # The peer: behind a proxy, the proxy (its own log has the client).
                    "client_ip": request.META.get("REMOTE_ADDR", ""),
                },
            )
        return response


class StateCacheScopeMiddleware:
    """One read of the state cache's generation per request, however many cached things (the
    key, the rollout, the active version) the request looks up: core.statecache."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        with statecache.scope():
            return self.get_response(request)


class DatabaseUnavailableMiddleware:
    """A view outside DRF (the probes, the admin, the dashboard) that meets the database gone
    answers 503 with Retry-After, as the API does (api.errors), rather than a 500: the request
    may simply be sent again. JSON where the API answers JSON."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        from django.conf import settings
        from django.http import HttpResponse, JsonResponse

        from .errors import DATABASE_UNAVAILABLE, database_unavailable_body

        if not isinstance(exception, DATABASE_UNAVAILABLE):
            return None
        logging.getLogger("api.errors").warning("database unavailable: %s", exception)
        if request.path.startswith(("/api/", "/healthz", "/readyz")):
            response = JsonResponse(database_unavailable_body(), status=503)
        else:
            response = HttpResponse("The service cannot reach its database; try again shortly.\n", status=503, content_type="text/plain")
        response["Retry-After"] = str(settings.UNAVAILABLE_RETRY_AFTER)
        return response
