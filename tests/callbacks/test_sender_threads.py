"""The sender never holds more leased claims than it has threads, whoever takes them."""

from callbacks import sender as sender_module
from callbacks.sender import Sender


def test_a_thread_reserved_during_the_claim_query_is_not_counted_free_twice(monkeypatch):
    """The delivering task's reserve() may run while the sender's loop is claiming: the loop's
    free threads are already held, so the task is told no (it leaves its row to the claims in
    turn) instead of both leasing a row for one thread."""
    sender = Sender(threads=1, poll=60)
    during = []

    def claim(*, limit, asked):
        during.append(sender.reserve())  # the task's reservation, in the middle of the query
        return []

    monkeypatch.setattr(sender_module, "callback_deliveries_claim", claim)
    sender._claim_and_send()
    assert during == [False]
    assert sender.in_flight == 0  # nothing claimed: the thread is given back
    assert sender.reserve() is True  # and free again


def test_the_threads_are_given_back_when_the_claim_query_fails(monkeypatch):
    sender = Sender(threads=2, poll=60)

    def claim(*, limit, asked):
        raise RuntimeError("database away")

    monkeypatch.setattr(sender_module, "callback_deliveries_claim", claim)
    try:
        sender._claim_and_send()
    except RuntimeError:
        pass
    assert sender.in_flight == 0
