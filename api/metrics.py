"""GET /metrics: the Prometheus exposition of the service (docs/observability.md).

No API key (Prometheus has none); limited to METRICS_ALLOWED_NETWORKS when that is set. Shows
every process that shares PROMETHEUS_MULTIPROC_DIR with this one (the API's gunicorn workers,
and under `make up` the local Celery workers too), plus what is read at scrape time: the broker's
queue depths, the callback deliveries still pending, and the receivers (in flight, waiting,
breakers).
"""

import ipaddress
import logging
from functools import lru_cache

from celery import current_app as celery_app
from django.conf import settings
from django.db.models import Count, Q
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import GaugeMetricFamily

from callbacks.models import CallbackDelivery, CallbackHost, DeliveryStatus
from core.metrics import scrape_registry

from .errors import error_body

logger = logging.getLogger(__name__)

# A scrape must answer within Prometheus's timeout (10 s by default) even with the broker down.
BROKER_TIMEOUT_SECONDS = 2


class QueueDepthCollector:
    """fda_queue_depth{queue}: messages ready in each configured queue, asked of the broker with
    a passive declare (which creates nothing). A broker that does not answer, or a transport
    that cannot count (the local runner's filesystem broker), leaves the series out: it never
    fails the scrape."""

    def collect(self):
        family = GaugeMetricFamily("fda_queue_depth", "Messages waiting in the queue (not yet handed to a worker).", labels=["queue"])
        try:
            with celery_app.connection_for_read(url=settings.CELERY_BROKER_URL) as conn:
                conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=BROKER_TIMEOUT_SECONDS)
                for queue in settings.CELERY_TASK_QUEUES:
                    # A channel per queue: a missing queue closes the channel that asked.
                    with conn.channel() as channel:
                        try:
                            _, depth, _ = channel.queue_declare(queue=queue.name, passive=True)
                        except Exception:
                            logger.debug("queue %s: depth unknown", queue.name, exc_info=True)
                            continue
                    family.add_metric([queue.name], float(depth or 0))
        except Exception:
            logger.warning("metrics: the broker did not answer; queue depths left out", exc_info=True)
        yield family


class PendingDeliveriesCollector:
    """fda_callback_deliveries_pending: deliveries not yet delivered or failed for good (a count
    in the database at scrape time, so every API process shows the same figure)."""

    def collect(self):
        family = GaugeMetricFamily(
            "fda_callback_deliveries_pending", "Callback deliveries still pending (being tried or waiting for a retry)."
        )
        try:
            family.add_metric([], CallbackDelivery.objects.filter(status=DeliveryStatus.PENDING).count())
        except Exception:
            logger.warning("metrics: could not count pending deliveries", exc_info=True)
        yield family


# Receivers shown one by one in the metrics, by rank (their names are in the admin): the label
# values stay bounded however many hosts there are.
BUSIEST_HOSTS = 5


class CallbackReceiversCollector:
    """Receivers at scrape time, from the database, with no host label (the admin names them):
    deliveries in flight and waiting (due, not yet sent) in all, hosts by breaker state, and the
    in flight and waiting of the BUSIEST_HOSTS receivers with the most waiting, by rank."""

    def collect(self):
        in_flight = GaugeMetricFamily("fda_callback_deliveries_in_flight", "Callback POSTs in flight (leased by a sender).")
        waiting = GaugeMetricFamily(
            "fda_callback_deliveries_waiting", "Callback deliveries due and waiting for a slot (per-host cap, open breaker, busy senders)."
        )
        hosts = GaugeMetricFamily(
            "fda_callback_hosts", "Receivers with pending deliveries or a breaker not closed, by breaker state.", labels=["breaker"]
        )
        busiest = GaugeMetricFamily(
            "fda_callback_busiest_host_deliveries",
            f"Deliveries of the {BUSIEST_HOSTS} receivers with the most waiting, by rank (1: the most); which hosts: the admin.",
            labels=["rank", "state"],
        )
        try:
            now = timezone.now()
            pending = CallbackDelivery.objects.filter(status=DeliveryStatus.PENDING).order_by()
            flying = dict(pending.filter(sending_until__gt=now).values_list("host").annotate(n=Count("id")))
            due = dict(pending.filter(next_attempt_at__lte=now).values_list("host").annotate(n=Count("id")))
            in_flight.add_metric([], sum(flying.values()))
            waiting.add_metric([], sum(due.values()))
            busy = set(pending.values_list("host", flat=True).distinct())
            states = dict.fromkeys(("closed", "open", "half_open"), 0)
            threshold = settings.CALLBACK_BREAKER_FAILURES
            for receiver in CallbackHost.objects.filter(Q(host__in=busy) | Q(consecutive_failures__gte=threshold)):
                states[receiver.breaker_state(now, threshold)] += 1
            for state, count in states.items():
                hosts.add_metric([state], count)
            ranked = sorted(due, key=lambda host: (-due[host], host))[:BUSIEST_HOSTS]
            for rank, host in enumerate(ranked, start=1):
                busiest.add_metric([str(rank), "waiting"], due[host])
                busiest.add_metric([str(rank), "in_flight"], flying.get(host, 0))
        except Exception:
            logger.warning("metrics: could not count the callback receivers", exc_info=True)
        yield from (in_flight, waiting, hosts, busiest)


@lru_cache(maxsize=8)
def _allowed_networks(entries: tuple[str, ...]) -> tuple | None:
    """The networks of METRICS_ALLOWED_NETWORKS; None when an entry is not a network (then
    nobody is let in: a typo must not open the endpoint)."""
    try:
        return tuple(ipaddress.ip_network(entry.strip(), strict=False) for entry in entries if entry.strip())
    except ValueError:
        logger.error("METRICS_ALLOWED_NETWORKS has an entry that is not a network: %r; /metrics refuses everyone", entries)
        return None


def _allowed(request: HttpRequest) -> bool:
    entries = tuple(settings.METRICS_ALLOWED_NETWORKS)
    if not entries:
        return True
    networks = _allowed_networks(entries)
    try:
        # The peer's address: behind a proxy that is the proxy, which then has to be allowed.
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    return bool(networks) and any(address in network for network in networks)


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    if not _allowed(request):
        return JsonResponse(error_body("forbidden", "Metrics are not served to this address."), status=403)
    registry = scrape_registry([QueueDepthCollector(), PendingDeliveriesCollector(), CallbackReceiversCollector()])
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
