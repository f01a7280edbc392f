"""Bring a broker to this release's routing: one direct exchange per queue.

Releases before it declared both queues bound to one shared exchange, named after the detect
queue, with routing key "detect": a message published there also landed in the delivery queue.
Durable queues keep their bindings across restarts and redeclarations, so declaring the new
exchanges is not enough: the stale bindings must be removed. This command declares every
configured queue with its exchange and binding, then unbinds each queue from every configured
exchange other than its own. RabbitMQ treats unbinding a binding that does not exist as a no-op,
so the command is idempotent: run it at every start.
"""

import time

from django.core.management.base import BaseCommand, CommandError

# The transports on which queues, exchanges and bindings live in a real AMQP broker.
AMQP_DRIVERS = {"amqp", "librabbitmq"}


def stale_bindings(queues) -> list[tuple[str, str, str]]:
    """(queue, exchange, routing key) for every binding of a configured queue to a configured
    exchange other than its own, under any configured routing key: what older releases may have
    left, and what this release never creates."""
    exchanges = sorted({q.exchange.name for q in queues if q.exchange is not None and q.exchange.name})
    keys = sorted({q.routing_key for q in queues if q.routing_key})
    stale = []
    for queue in queues:
        for exchange in exchanges:
            if exchange == queue.exchange.name:
                continue
            for key in keys:
                stale.append((queue.name, exchange, key))
    return stale


class Command(BaseCommand):
    help = (
        "Declare the Celery queues, each with its own exchange and routing key, and remove the "
        "bindings of older releases (a queue bound to another queue's exchange). Idempotent."
    )

    def add_arguments(self, parser):
        parser.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the broker")

    def handle(self, *args, wait: float, **options):
        from celery import current_app as app

        queues = list(app.amqp.queues.values())
        with app.connection_for_write() as conn:
            driver = conn.transport.driver_type
            if driver not in AMQP_DRIVERS:
                # Kombu's filesystem transport (the local runner's fallback) and the like: no
                # broker holds bindings from an older release. Nothing is connected or written.
                self.stdout.write(f"broker is {conn.transport_cls}:// ({driver}), not RabbitMQ: nothing to do")
                return
            self._connect(conn, wait)
            channel = conn.channel()
            try:
                for queue in queues:
                    queue(channel).declare()
                    self.stdout.write(
                        f"declared queue {queue.name}: bound to exchange {queue.exchange.name} "
                        f"({queue.exchange.type}{', durable' if queue.exchange.durable else ''}) "
                        f"with key {queue.routing_key}"
                    )
                for queue, exchange, key in stale_bindings(queues):
                    channel.queue_unbind(queue=queue, exchange=exchange, routing_key=key)
                    self.stdout.write(f"unbound queue {queue} from exchange {exchange} with key {key} (if it was bound)")
            finally:
                channel.close()
        self.stdout.write("done: each queue bound to its own exchange, unbound from the others")

    def _connect(self, conn, wait: float) -> None:
        deadline = time.monotonic() + wait
        while True:
            try:
                conn.ensure_connection(max_retries=1)
                return
            except Exception as exc:  # kombu's OperationalError and socket errors alike
                if time.monotonic() > deadline:
                    raise CommandError(f"broker unreachable: {exc}") from exc
                conn.close()
                time.sleep(1)
