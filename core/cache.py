"""Django's Redis cache, with one client object per connection pool instead of one per call.

Django's RedisCacheClient builds a new ``redis.Redis`` for every get, set or incr (its
constructor fills a table of some 170 response callbacks: about 0.15 ms each time), and the API
reads the cache several times a request (the rate limits' counters, the state cache's
generation). A ``redis.Redis`` is safe to share between threads (each command takes a
connection from the pool), so one per pool is kept. Selected in settings.CACHES for a redis://
CACHE_URL; nothing else changes.
"""

from django.core.cache.backends.redis import RedisCache, RedisCacheClient


class SharedClientRedisCacheClient(RedisCacheClient):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._clients: dict[int, object] = {}

    def get_client(self, key=None, *, write=False):
        index = self._get_connection_pool_index(write)
        client = self._clients.get(index)
        if client is None:
            # Two threads racing here both build one; the second simply replaces the first.
            client = self._clients[index] = self._client(connection_pool=self._get_connection_pool(write))
        return client


class SharedClientRedisCache(RedisCache):
    def __init__(self, server, params) -> None:
        super().__init__(server, params)
        self._class = SharedClientRedisCacheClient
