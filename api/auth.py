"""DRF authentication, permissions and throttling with API keys (the keys themselves:
clients/services.py)."""

import logging

from django.conf import settings
from rest_framework import authentication, exceptions, permissions, throttling

from clients.services import api_key_check, api_key_touch

logger = logging.getLogger(__name__)


class ApiKeyAuthentication(authentication.BaseAuthentication):
    """``Authorization: Api-Key <key>`` or ``X-API-Key: <key>``."""

    keyword = "Api-Key"

    def authenticate(self, request):
        header = request.META.get("HTTP_AUTHORIZATION", "")
        key = ""
        if header:
            scheme, _, value = header.partition(" ")
            if scheme.lower() != self.keyword.lower():
                return None  # another scheme: not ours to judge (and not valid here either)
            key = value.strip()
        else:
            key = request.META.get("HTTP_X_API_KEY", "").strip()
            if not key:
                return None
        row = api_key_check(key)
        if row is None:
            raise exceptions.AuthenticationFailed("Invalid or revoked API key.", code="invalid_api_key")
        api_key_touch(key=row)
        return row.client, row

    def authenticate_header(self, request) -> str:
        # Makes DRF answer 401 (not 403) with WWW-Authenticate when no key is given.
        return self.keyword


class IsOperator(permissions.BasePermission):
    """Only an operator's key (create_api_key NAME --operator) may manage rollouts: 403
    ``forbidden`` for a client's key. Put it after IsAuthenticated, so that a request with no
    key still gets 401."""

    message = "This route needs an operator's API key (create_api_key NAME --operator)."
    code = "forbidden"

    def has_permission(self, request, view) -> bool:
        return bool(getattr(request.user, "is_authenticated", False) and getattr(request.user, "is_operator", False))


class ApiKeyRateThrottle(throttling.SimpleRateThrottle):
    """Requests per API key, with the rate read from settings at each request (API_RATE_LIMIT).

    If the cache (Redis) is unreachable the request is let through and the failure logged: an
    outage of the rate limiter must not become an outage of the API."""

    scope = "api_key"
    setting = "API_RATE_LIMIT"

    def get_rate(self):
        return getattr(settings, self.setting) or None

    def get_cache_key(self, request, view):
        if request.auth is None:
            return None
        return self.cache_format % {"scope": self.scope, "ident": request.auth.prefix}

    def allow_request(self, request, view):
        self.rate = self.get_rate()
        self.num_requests, self.duration = self.parse_rate(self.rate)
        try:
            return super().allow_request(request, view)
        except Exception:
            logger.exception("rate limiter unavailable; letting the request through")
            return True


class UploadRateThrottle(ApiKeyRateThrottle):
    """Uploads per API key (API_UPLOAD_RATE_LIMIT), on POST /api/v1/images/ only."""

    scope = "api_key_upload"
    setting = "API_UPLOAD_RATE_LIMIT"

    def allow_request(self, request, view):
        if request.method != "POST":
            return True
        return super().allow_request(request, view)
