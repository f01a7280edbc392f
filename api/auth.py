"""API keys: how they are made, checked, revoked; DRF authentication and throttling with them."""

import hashlib
import hmac
import logging
import secrets

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from rest_framework import authentication, exceptions, throttling

from .models import ApiClient, ApiKey

logger = logging.getLogger(__name__)

KEY_PREFIX = "fda"


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def api_key_create(*, client_name: str) -> tuple[ApiKey, str]:
    """A new key for the named client (made if missing). Returns the row and the key, which is
    shown this once and never stored."""
    prefix = secrets.token_hex(4)
    key = f"{KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}"
    with transaction.atomic():
        client, _ = ApiClient.objects.get_or_create(name=client_name)
        if not client.is_active:
            client.is_active = True
            client.save(update_fields=["is_active"])
        row = ApiKey.objects.create(client=client, prefix=prefix, key_hash=_hash(key))
    return row, key


def api_key_revoke(*, prefix: str) -> bool:
    """Revoke one key by its prefix. Returns False if no active key has it."""
    return bool(ApiKey.objects.filter(prefix=prefix, revoked_at__isnull=True).update(revoked_at=timezone.now()))


def api_keys_revoke_all(*, clients) -> int:
    """Revoke every active key of these clients (a queryset). Returns how many were revoked."""
    return ApiKey.objects.filter(client__in=clients, revoked_at__isnull=True).update(revoked_at=timezone.now())


def api_key_check(key: str) -> ApiKey | None:
    """The active key row for ``key``, or None."""
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX:
        return None
    row = ApiKey.objects.select_related("client").filter(prefix=parts[1]).first()
    if row is None or not hmac.compare_digest(row.key_hash, _hash(key)):
        return None
    if row.revoked_at is not None or not row.client.is_active:
        return None
    return row


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
        # Throttled to once a minute per key: last_used_at is for operators, not an audit log.
        if row.last_used_at is None or (timezone.now() - row.last_used_at).total_seconds() > 60:
            ApiKey.objects.filter(id=row.id).update(last_used_at=timezone.now())
        return row.client, row

    def authenticate_header(self, request) -> str:
        # Makes DRF answer 401 (not 403) with WWW-Authenticate when no key is given.
        return self.keyword


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
