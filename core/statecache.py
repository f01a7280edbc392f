"""Per-process caches of what every request reads and seldom changes (an API key's row, the
active detector version, the live rollout), kept exact by a generation token in the shared cache
(Redis, CACHE_URL).

Every entry is stored with the token read before it was loaded from the database; a lookup
serves it only while the token is still the same. Whatever changes such a row calls bump(),
which sets a new random token at once and again when the transaction commits (the model signals
the apps connect in their ready(), and the services that write with queryset.update()). So a
revoked key, an activation or a rollout change is seen by every process on its next request.
The token is random, never a counter: a Redis that restarted empty, or evicted the key, can never
give back a token an entry was stored under.

Within a request (scope(), opened by api.middleware) the token is read once, however many
lookups the request makes: one Redis GET instead of a query per thing. Outside a scope every
lookup reads it.

What is never served from the cache: anything when the token cannot be read (Redis down, or a
cache that is not shared between processes, such as locmem: each lookup reads the database
then); anything read by a connection inside a transaction that changed such a row (it could see
its own uncommitted change, which a rollback would make a lie). As a backstop against a bump that
never reached Redis (Redis down while a key was revoked, then back with its old token), an entry
is also reloaded after MAX_AGE_SECONDS.
"""

import logging
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from typing import TypeVar

from django.conf import settings
from django.core.cache import DEFAULT_CACHE_ALIAS, cache
from django.db import connection, transaction

logger = logging.getLogger(__name__)

T = TypeVar("T")

GENERATION_KEY = "statecache:generation"
MAX_AGE_SECONDS = 10.0
# Keys are looked up by what clients send: a bound, so that unknown ones cannot grow it forever.
MAX_ENTRIES = 10_000
# A Redis outage is logged once in this many seconds per process, not once per request.
WARN_EVERY_SECONDS = 60.0

_UNREAD = object()
_local = threading.local()
_last_warning = 0.0


class ProcessCache:
    """The entries of one process: (kind, key) -> (token, when loaded, value)."""

    def __init__(self) -> None:
        self.entries: dict[tuple[str, str], tuple[str, float, object]] = {}

    def cached(self, kind: str, key: str, load: Callable[[], T], *, keep_none: bool = True) -> T:
        if _dirty():
            return load()
        token = _generation()
        if token is None:
            self.entries.clear()  # nothing kept before the outage can be trusted after it
            return load()
        now = time.monotonic()
        entry = self.entries.get((kind, key))
        if entry is not None and entry[0] == token and now - entry[1] < MAX_AGE_SECONDS:
            return entry[2]
        # Loaded after the token was read: a change committed meanwhile has bumped it, so this
        # value is replaced on the next lookup.
        value = load()
        if value is not None or keep_none:
            if len(self.entries) >= MAX_ENTRIES:
                self.entries.clear()
            self.entries[(kind, key)] = (token, now, value)
        return value


# This process's (tests swap in another to play a second process).
process_cache = ProcessCache()


# Caches of this process only (locmem, the embedded stand-in) cannot tell the others anything.
UNSHARED_BACKENDS = ("django.core.cache.backends.locmem.LocMemCache", "django.core.cache.backends.dummy.DummyCache")


def _shared() -> bool:
    return settings.CACHES[DEFAULT_CACHE_ALIAS]["BACKEND"] not in UNSHARED_BACKENDS


def _warn(message: str, exc: Exception) -> None:
    global _last_warning
    now = time.monotonic()
    if now - _last_warning >= WARN_EVERY_SECONDS:
        _last_warning = now
        logger.warning("%s: %s; reading the database instead", message, exc.__class__.__name__)


def _read_generation() -> str | None:
    """The current token (made if Redis has none), or None when it cannot be read."""
    if not _shared():
        return None
    try:
        token = cache.get(GENERATION_KEY)
        if token is None:
            cache.add(GENERATION_KEY, uuid.uuid4().hex, timeout=None)
            token = cache.get(GENERATION_KEY)
    except Exception as exc:  # noqa: BLE001 - any failure of the cache means: ask the database
        _warn("state cache generation unreadable", exc)
        return None
    return token if isinstance(token, str) else None


def _generation() -> str | None:
    scope = getattr(_local, "scope", None)
    if scope is None:
        return _read_generation()
    if scope[0] is _UNREAD:
        scope[0] = _read_generation()
    return scope[0]


def _dirty() -> bool:
    """Whether this thread's connection is inside a transaction that changed cached state."""
    if not getattr(connection, "statecache_dirty", False):
        return False
    if connection.in_atomic_block:
        return True
    connection.statecache_dirty = False  # that transaction is over (committed or rolled back)
    return False


def cached(kind: str, key: str, load: Callable[[], T], *, keep_none: bool = True) -> T:
    """``load()``'s value, from this process's cache while the generation has not changed.
    ``keep_none=False``: a None (nothing found) is not kept, for keys that clients make up."""
    return process_cache.cached(kind, key, load, keep_none=keep_none)


def _bump_now() -> None:
    process_cache.entries.clear()
    scope = getattr(_local, "scope", None)
    if scope is not None:
        scope[0] = _UNREAD
    if not _shared():
        return
    try:
        cache.set(GENERATION_KEY, uuid.uuid4().hex, timeout=None)
    except Exception:
        # The other processes keep their entries until Redis answers again (they read the
        # database meanwhile) or MAX_AGE_SECONDS passes.
        logger.exception("could not bump the state cache generation")


def bump(**_: object) -> None:
    """Make every process's cached state stale: now, and again once the current transaction
    commits (a process that read the new token before the commit may have cached the old rows).
    Takes any keyword arguments, so that it can be connected to model signals as it is."""
    _bump_now()
    if connection.in_atomic_block:
        connection.statecache_dirty = True
        transaction.on_commit(_bump_now)


@contextmanager
def scope():
    """Read the generation at most once inside (one request)."""
    outer = getattr(_local, "scope", None)
    _local.scope = [_UNREAD]
    try:
        yield
    finally:
        _local.scope = outer


def reset() -> None:
    """Forget this process's entries (tests)."""
    process_cache.entries.clear()
    _local.scope = None
