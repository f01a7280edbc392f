"""Rollouts: moving traffic from the baseline version to a candidate, and the record of every
decision taken on the way."""

import uuid
from dataclasses import dataclass
from typing import Any

from django.db import models


class RolloutMode(models.TextChoices):
    CANARY = "canary"  # the candidate serves its cohorts' share, rising stage by stage
    AB = "ab"  # a fixed split until an operator ends it
    SHADOW = "shadow"  # clients always get the baseline; the candidate runs on copies
    BLUE_GREEN = "blue_green"  # everyone switches at once, once every worker has the candidate loaded


class RolloutStatus(models.TextChoices):
    RUNNING = "running"
    PAUSED = "paused"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"
    ENDED = "ended"


# A rollout in one of these routes traffic; at most one at a time (a database constraint).
LIVE_STATUSES = (RolloutStatus.RUNNING, RolloutStatus.PAUSED)


class Variant(models.TextChoices):
    BASELINE = "baseline"
    CANDIDATE = "candidate"


# The guardrails' window settings when a rollout does not set them (rollouts.services validates
# what it does set).
DEFAULT_GUARDRAILS = {"window_seconds": 600, "min_jobs": 20, "consecutive_breaches": 2}


@dataclass(frozen=True)
class Stage:
    """Where a staged rollout (canary, A/B) stands in its plan."""

    index: int  # 0-based
    of: int  # how many stages there are
    weight: int
    min_seconds: int
    min_jobs: int

    @property
    def number(self) -> int:
        """1-based, as people count stages."""
        return self.index + 1

    @property
    def label(self) -> str:
        """``"2 of 4"``."""
        return f"{self.number} of {self.of}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "number": self.number,
            "of": self.of,
            "weight": self.weight,
            "min_seconds": self.min_seconds,
            "min_jobs": self.min_jobs,
        }


class Rollout(models.Model):
    """One move from ``baseline`` (the active version when it started) to ``candidate``."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    mode = models.CharField(max_length=16, choices=RolloutMode.choices)
    status = models.CharField(max_length=16, choices=RolloutStatus.choices, default=RolloutStatus.RUNNING, db_index=True)
    baseline = models.ForeignKey("registry.DetectorVersion", on_delete=models.PROTECT, related_name="+")
    candidate = models.ForeignKey("registry.DetectorVersion", on_delete=models.PROTECT, related_name="+")
    # [{"weight": 5, "min_seconds": 600, "min_jobs": 50}, ...]; weight is the candidate's share in %.
    stages = models.JSONField(default=list)
    stage_index = models.PositiveSmallIntegerField(default=0)
    stage_started_at = models.DateTimeField(null=True, blank=True)
    # The candidate's current share of routed traffic, 0 to 100.
    weight = models.PositiveSmallIntegerField(default=0)
    # {"p95_latency_ratio_max", "error_rate_max", "agreement_min", "window_seconds", "min_jobs",
    #  "consecutive_breaches"}: see rollouts/guardrails.py.
    guardrails = models.JSONField(default=dict)
    # Share of jobs (0 to 1) that also run on the other version, to compare faces (agreement).
    shadow_sample = models.FloatField(default=0.0)
    quality_drop_max = models.FloatField(null=True, blank=True)
    # Guardrail evaluations in a row that found a breach; reset by a clean one.
    breaches = models.PositiveIntegerField(default=0)
    # Blue-green: when everyone was switched to the candidate (null: not yet).
    switched_at = models.DateTimeField(null=True, blank=True)
    created_by = models.CharField(max_length=128)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["status"],
                condition=models.Q(status__in=["running", "paused"]),
                name="rollout_one_live_at_a_time",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.mode} {self.baseline_id} -> {self.candidate_id} ({self.status})"

    @property
    def is_live(self) -> bool:
        return self.status in LIVE_STATUSES

    # The one read of a rollout's plan and window: the API, the dashboard, the admin, the shell
    # command and the beat task all go through these, so none re-derives them.

    @property
    def current_stage(self) -> Stage | None:
        """The stage the rollout is at (None: no stages, as in shadow and blue-green). An index
        past the plan, which no transition leaves, reads as the last stage."""
        if not self.stages:
            return None
        index = min(self.stage_index, len(self.stages) - 1)
        stage = self.stages[index]
        return Stage(
            index=index,
            of=len(self.stages),
            weight=stage["weight"],
            min_seconds=stage.get("min_seconds", 0),
            min_jobs=stage.get("min_jobs", 0),
        )

    def guardrail_setting(self, name: str) -> int:
        """One of the window settings (window_seconds, min_jobs, consecutive_breaches): the
        rollout's own, else the default."""
        return self.guardrails.get(name, DEFAULT_GUARDRAILS[name])

    @property
    def window_seconds(self) -> int:
        """The sliding window the guardrails judge, in seconds."""
        return self.guardrail_setting("window_seconds")


class RolloutEvent(models.Model):
    """One transition or verdict, automatic or by hand: append-only (never changed or deleted)."""

    rollout = models.ForeignKey(Rollout, on_delete=models.PROTECT, related_name="events")
    at = models.DateTimeField(auto_now_add=True, db_index=True)
    # Who or what: "operator:<client name>", "admin:<user>", "shell", "system:guardrails", ...
    actor = models.CharField(max_length=160)
    action = models.CharField(max_length=32)  # start, advance, pause, resume, breach, rollback, promote, end, ...
    from_status = models.CharField(max_length=16, blank=True)
    to_status = models.CharField(max_length=16, blank=True)
    from_weight = models.PositiveSmallIntegerField(null=True, blank=True)
    to_weight = models.PositiveSmallIntegerField(null=True, blank=True)
    reason = models.TextField(blank=True)
    # The figures that led to it (guardrail windows per variant, thresholds).
    figures = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["at", "id"]

    def __str__(self) -> str:
        return f"{self.action} by {self.actor} at {self.at:%Y-%m-%d %H:%M:%S}"

    def save(self, *args, **kwargs):
        if self.pk is not None:
            raise ValueError("rollout events are append-only")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise ValueError("rollout events are append-only")
