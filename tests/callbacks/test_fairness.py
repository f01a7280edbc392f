"""Claims are fair between receivers: a cap on tries in flight per host, and a circuit breaker
per host that opens after failures in a row and lets one try through after its pause."""

import datetime as dt

import pytest
from django.utils import timezone

from callbacks.http import PostResult
from callbacks.models import CallbackDelivery, CallbackHost
from callbacks.services import callback_deliveries_claim, callback_delivery_record
from tests.callbacks.factories import finished_jobs

pytestmark = [pytest.mark.django_db]

A = "http://a.example:8080/hook"
B = "https://b.example/hook"


@pytest.fixture(autouse=True)
def _no_handover(monkeypatch):
    """Fresh rows claimable at once by any sender (the handover is tested on its own)."""
    monkeypatch.setattr("callbacks.services.HANDOVER_SECONDS", 0.0)


def test_a_fresh_delivery_is_left_to_the_sender_it_was_handed_to(monkeypatch):
    """A never-tried delivery goes to the sender its task woke (which names it), not to another
    sender's poll, for HANDOVER_SECONDS."""
    monkeypatch.setattr("callbacks.services.HANDOVER_SECONDS", 60.0)
    (delivery_id,) = finished_jobs(A, 1, "a")
    assert callback_deliveries_claim(limit=10) == []
    (claim,) = callback_deliveries_claim(limit=10, asked=[delivery_id])
    assert claim.delivery_id == delivery_id


def answered(code: int | None) -> PostResult:
    return PostResult(timezone.now(), code, "" if code else "ReadTimeout: slow", 5, "")


def test_a_host_gets_at_most_its_cap_and_others_are_served(settings):
    """Six due for A and two for B with a cap of 4: A gets 4, B gets its 2; then A waits until
    one of its tries is recorded."""
    settings.CALLBACK_MAX_IN_FLIGHT_PER_HOST = 4
    finished_jobs(A, 6, "a")
    finished_jobs(B, 2, "b")
    claims = callback_deliveries_claim(limit=100)
    by_host = {}
    for claim in claims:
        by_host.setdefault(claim.host, []).append(claim)
    assert {host: len(c) for host, c in by_host.items()} == {"a.example:8080": 4, "b.example:443": 2}
    assert callback_deliveries_claim(limit=100) == []
    callback_delivery_record(claim=by_host["a.example:8080"][0], result=answered(200))
    (next_claim,) = callback_deliveries_claim(limit=100)
    assert next_claim.host == "a.example:8080"


def test_the_limit_goes_to_the_host_served_least_recently(settings):
    """One free slot and two hosts waiting: the one not served last time gets it."""
    finished_jobs(A, 3, "a")
    finished_jobs(B, 3, "b")
    first = callback_deliveries_claim(limit=1)[0].host
    second = callback_deliveries_claim(limit=1)[0].host
    assert {first, second} == {"a.example:8080", "b.example:443"}


def test_failures_in_a_row_open_the_breaker_and_a_probe_closes_it(settings):
    """Three timeouts in a row open A's breaker: nothing of A is claimed (B still is), and no
    attempt is spent; after the pause one try goes through, and its success closes it."""
    settings.CALLBACK_BREAKER_FAILURES = 3
    settings.CALLBACK_BREAKER_PAUSE = 60
    settings.CALLBACK_RETRY_DELAYS = [0, 0, 0, 0, 0]
    finished_jobs(A, 5, "a")
    finished_jobs(B, 1, "b")
    for claim in [c for c in callback_deliveries_claim(limit=100) if c.host == "a.example:8080"][:3]:
        callback_delivery_record(claim=claim, result=answered(None))
    host = CallbackHost.objects.get(host="a.example:8080")
    assert host.breaker_state(timezone.now(), 3) == "open" and host.opened_count == 1
    attempts_before = sum(CallbackDelivery.objects.filter(host="a.example:8080").values_list("attempt_count", flat=True))
    # A's fourth in-flight try is still out; nothing new of A is claimed while open.
    assert {c.host for c in callback_deliveries_claim(limit=100)} <= {"b.example:443"}
    assert sum(CallbackDelivery.objects.filter(host="a.example:8080").values_list("attempt_count", flat=True)) == attempts_before

    CallbackHost.objects.filter(host="a.example:8080").update(open_until=timezone.now() - dt.timedelta(seconds=1))
    CallbackDelivery.objects.filter(host="a.example:8080").update(sending_until=None)  # the old tries came back
    probes = [c for c in callback_deliveries_claim(limit=100) if c.host == "a.example:8080"]
    assert len(probes) == 1  # half open: one at a time
    callback_delivery_record(claim=probes[0], result=answered(204))
    host.refresh_from_db()
    assert host.breaker_state(timezone.now(), 3) == "closed" and host.consecutive_failures == 0


def test_a_failed_probe_opens_the_breaker_again(settings):
    settings.CALLBACK_BREAKER_FAILURES = 1
    settings.CALLBACK_RETRY_DELAYS = [0, 0, 0]
    finished_jobs(A, 1, "a")
    (claim,) = callback_deliveries_claim(limit=10)
    callback_delivery_record(claim=claim, result=answered(503))
    CallbackHost.objects.filter(host="a.example:8080").update(open_until=timezone.now() - dt.timedelta(seconds=1))
    (probe,) = callback_deliveries_claim(limit=10)
    callback_delivery_record(claim=probe, result=answered(None))
    host = CallbackHost.objects.get(host="a.example:8080")
    assert host.breaker_state(timezone.now(), 1) == "open" and host.opened_count == 2


def test_a_client_error_is_an_answer_not_a_failure(settings):
    """A 4xx fails that delivery, but the receiver answered: its breaker stays closed."""
    settings.CALLBACK_BREAKER_FAILURES = 1
    finished_jobs(A, 1, "a")
    (claim,) = callback_deliveries_claim(limit=10)
    callback_delivery_record(claim=claim, result=answered(410))
    assert CallbackHost.objects.get(host="a.example:8080").breaker_state(timezone.now(), 1) == "closed"


def test_receivers_show_in_the_metrics_by_rank_without_host_names(settings, client):
    """In flight and waiting in all, breakers by state, the busiest hosts by rank: no host label."""
    settings.CALLBACK_MAX_IN_FLIGHT_PER_HOST = 1
    finished_jobs(A, 3, "a")
    finished_jobs(B, 1, "b")
    callback_deliveries_claim(limit=100)  # one of A's and B's in flight; two of A's waiting
    text = client.get("/metrics").content.decode()
    assert "fda_callback_deliveries_in_flight 2.0" in text
    assert "fda_callback_deliveries_waiting 2.0" in text
    assert 'fda_callback_hosts{breaker="closed"} 2.0' in text
    assert 'fda_callback_busiest_host_deliveries{rank="1",state="waiting"} 2.0' in text
    assert 'fda_callback_busiest_host_deliveries{rank="1",state="in_flight"} 1.0' in text
    assert "a.example" not in text


def test_the_admin_lists_receivers_with_their_breaker(settings, admin_client):
    settings.CALLBACK_MAX_IN_FLIGHT_PER_HOST = 1
    finished_jobs(A, 3, "a")
    callback_deliveries_claim(limit=100)
    page = admin_client.get("/admin/callbacks/callbackhost/").content.decode()
    assert "a.example:8080" in page and "closed" in page
