"""The per-process caches of keys, the active version and the live rollout (core.statecache):
served from memory while nothing changed, and a revocation, an activation or a rollout change
seen by every process on its very next request. A second process is played by a second
ProcessCache swapped in: its entries are not cleared by a change made here, only told by Redis."""

from contextlib import contextmanager

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from clients.services import api_key_revoke
from core import statecache
from registry.services import detector_version_activate, detector_version_for_job
from rollouts.services import rollout_rollback, rollout_route, rollout_start

pytestmark = pytest.mark.django_db(transaction=True)


@contextmanager
def as_process(cache: statecache.ProcessCache):
    """Run the block as if in the process that holds ``cache``."""
    mine = statecache.process_cache
    statecache.process_cache = cache
    try:
        yield
    finally:
        statecache.process_cache = mine


def queries(block) -> list[str]:
    with CaptureQueriesContext(connection) as captured:
        block()
    return [query["sql"] for query in captured.captured_queries]


class BrokenRedis:
    """A cache whose server does not answer."""

    def get(self, *args, **kwargs):
        raise ConnectionError("Redis is down")

    add = set = get


def test_a_revoked_key_is_refused_on_the_next_request_of_a_process_that_cached_it(api_client, api_key):
    other = statecache.ProcessCache()
    with as_process(other):
        assert api_client.get("/api/v1/images/").status_code == 200
        # Cached: the next request reads no key row (and its last use was written once).
        assert not any("api_apikey" in sql for sql in queries(lambda: api_client.get("/api/v1/images/")))

    assert api_key_revoke(prefix=api_key.split("_")[1])  # in this process, not the other
    assert ("api_key", api_key.split("_")[1]) in other.entries  # the other still holds the row

    with as_process(other):
        answer = api_client.get("/api/v1/images/")
    assert answer.status_code == 401 and answer.json()["error"]["code"] == "invalid_api_key"


def test_an_activation_switches_new_jobs_in_another_process_at_once():
    other = statecache.ProcessCache()
    with as_process(other):
        assert detector_version_for_job(requested=None).id == "mtcnn@1.0.0"
        assert queries(lambda: detector_version_for_job(requested=None)) == []

    detector_version_activate(version_id="mtcnn@1.2.0")

    with as_process(other):
        assert detector_version_for_job(requested=None).id == "mtcnn@1.2.0"


def test_a_rollout_change_routes_the_next_job_of_another_process_at_once():
    other = statecache.ProcessCache()
    with as_process(other):
        assert rollout_route(client_id=1) is None
        assert queries(lambda: rollout_route(client_id=1)) == []

    rollout = rollout_start(candidate="mtcnn@1.2.0", mode="ab", actor="test", stages=[{"weight": 100}])
    with as_process(other):
        route = rollout_route(client_id=1)
        assert (route.rollout.id, route.variant, route.version.id) == (rollout.id, "candidate", "mtcnn@1.2.0")
        assert queries(lambda: rollout_route(client_id=1)) == []

    rollout_rollback(rollout_id=rollout.id, actor="test", reason="test")
    with as_process(other):
        assert rollout_route(client_id=1) is None


def test_without_redis_every_lookup_reads_the_database(api_client, api_key, monkeypatch):
    """Never a stale key: with the generation unreadable nothing is served from memory."""
    assert api_client.get("/api/v1/images/").status_code == 200  # cached while Redis answered
    monkeypatch.setattr(statecache, "cache", BrokenRedis())
    for _ in range(2):
        assert sum("api_apikey" in sql for sql in queries(lambda: api_client.get("/api/v1/images/"))) == 1
    assert api_key_revoke(prefix=api_key.split("_")[1])
    assert api_client.get("/api/v1/images/").status_code == 401


def test_a_cache_of_one_process_only_is_not_used(settings):
    """locmem (the embedded stand-in) cannot tell other processes of a change: not used."""
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    detector_version_for_job(requested=None)
    assert len(queries(lambda: detector_version_for_job(requested=None))) == 1


def test_a_transaction_that_changed_cached_state_keeps_nothing_it_read():
    """It sees its own uncommitted change: kept, a rollback would leave it in the cache."""
    with pytest.raises(RuntimeError), transaction.atomic():
        detector_version_activate(version_id="mtcnn@1.2.0")
        assert detector_version_for_job(requested=None).id == "mtcnn@1.2.0"
        raise RuntimeError("rolled back")
    assert statecache.process_cache.entries == {}
    assert detector_version_for_job(requested=None).id == "mtcnn@1.0.0"


def test_a_request_reads_the_generation_once(api_client, monkeypatch):
    """One Redis GET per request, however many cached things it looks up."""
    real = statecache.cache
    reads = []

    class Counting:
        def get(self, key, *args, **kwargs):
            reads.append(key)
            return real.get(key, *args, **kwargs)

        def add(self, *args, **kwargs):
            return real.add(*args, **kwargs)

        def set(self, *args, **kwargs):
            return real.set(*args, **kwargs)

    monkeypatch.setattr(statecache, "cache", Counting())
    assert api_client.get("/api/v1/images/").status_code == 200
    assert reads == [statecache.GENERATION_KEY]
