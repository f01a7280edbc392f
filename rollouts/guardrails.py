"""The verdicts of a live rollout, taken by Celery beat (workers.tasks.evaluate_rollouts) on the
figures of a sliding window: a guardrail breached in enough evaluations in a row rolls the
rollout back by itself; a canary stage whose minimums are met advances; a blue-green rollout
switches once every live detection worker has the candidate loaded.

Not implemented yet in this commit: see the rollouts work in progress.
"""

from typing import Any


def rollout_evaluate(*, rollout_id, figures: dict[str, Any], warm: dict[str, int]) -> dict[str, Any]:
    raise NotImplementedError
