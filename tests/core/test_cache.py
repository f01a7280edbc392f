"""The Redis cache keeps one client object per connection pool (core/cache.py) and is still
Django's cache: values, counters, expiry, from many threads at once."""

import threading
import uuid

from django.core.cache import cache


def test_the_configured_cache_shares_one_client_per_pool():
    backend = cache._cache  # Django's RedisCacheClient, ours
    assert type(backend).__name__ == "SharedClientRedisCacheClient"
    assert backend.get_client() is backend.get_client()
    assert backend.get_client(write=True) is backend.get_client(write=True)


def test_the_shared_client_reads_and_writes_from_many_threads():
    key = f"cache-test-{uuid.uuid4().hex}"
    cache.set(key, 0, 30)
    errors = []

    def bump() -> None:
        try:
            for _ in range(50):
                cache.incr(key)
        except Exception as exc:  # pragma: no cover - shown by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=bump) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert cache.get(key) == 400
    cache.delete(key)
    assert cache.get(key) is None
