"""API keys: how they are made, checked and revoked.

Only a SHA-256 of a key is stored (keys are 190+ random bits, so a fast hash is enough); the
prefix finds the row and is safe to show.
"""

import hashlib
import hmac
import secrets

from django.db import transaction
from django.utils import timezone

from core import statecache

from .models import ApiClient, ApiKey

KEY_PREFIX = "fda"
# last_used_at is for operators, not an audit log: written at most once a minute per key.
LAST_USED_RESOLUTION_SECONDS = 60


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def api_key_create(*, client_name: str, operator: bool = False) -> tuple[ApiKey, str]:
    """A new key for the named client (made if missing). Returns the row and the key, which is
    shown this once and never stored. ``operator`` makes the client an operator (its keys may
    manage rollouts); without it an existing operator stays one (a new key never demotes)."""
    prefix = secrets.token_hex(4)
    key = f"{KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}"
    with transaction.atomic():
        client, _ = ApiClient.objects.get_or_create(name=client_name)
        changed = []
        if not client.is_active:
            client.is_active = True
            changed.append("is_active")
        if operator and not client.is_operator:
            client.is_operator = True
            changed.append("is_operator")
        if changed:
            client.save(update_fields=changed)
        row = ApiKey.objects.create(client=client, prefix=prefix, key_hash=_hash(key))
    return row, key


def api_key_revoke(*, prefix: str) -> bool:
    """Revoke one key by its prefix, at once in every process (core.statecache). Returns False
    if no active key has it."""
    revoked = bool(ApiKey.objects.filter(prefix=prefix, revoked_at__isnull=True).update(revoked_at=timezone.now()))
    statecache.bump()  # update() sends no signal
    return revoked


def api_keys_revoke_all(*, clients) -> int:
    """Revoke every active key of these clients (a queryset). Returns how many were revoked."""
    revoked = ApiKey.objects.filter(client__in=clients, revoked_at__isnull=True).update(revoked_at=timezone.now())
    statecache.bump()  # update() sends no signal
    return revoked


def api_key_check(key: str) -> ApiKey | None:
    """The active key row for ``key``, or None."""
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX:
        return None
    # Checked on every request: the row comes from this process's cache while no key or client
    # has changed anywhere (a revocation is seen at once); only found rows are kept.
    prefix = parts[1]
    row = statecache.cached(
        "api_key", prefix, lambda: ApiKey.objects.select_related("client").filter(prefix=prefix).first(), keep_none=False
    )
    if row is None or not hmac.compare_digest(row.key_hash, _hash(key)):
        return None
    if row.revoked_at is not None or not row.client.is_active:
        return None
    return row


def api_key_touch(*, key: ApiKey) -> None:
    """Record that the key was just used (at most once a minute)."""
    now = timezone.now()
    if key.last_used_at is None or (now - key.last_used_at).total_seconds() > LAST_USED_RESOLUTION_SECONDS:
        ApiKey.objects.filter(id=key.id).update(last_used_at=now)
        # The row may be this process's cached one: the next request need not write again.
        key.last_used_at = now
