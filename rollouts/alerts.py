"""Announcing an automatic rollback: a POST to ROLLOUT_ALERT_URL, signed like the callbacks.

Not implemented yet in this commit: see the rollouts work in progress.
"""


def rollout_alert_send(*, event_id: int) -> None:
    raise NotImplementedError
