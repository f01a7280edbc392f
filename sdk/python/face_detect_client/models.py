"""What the API returns, as small typed objects. Each keeps the whole JSON in ``raw``: fields the
service adds later are there before this package names them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# The statuses a job never leaves (jobs/models.py TERMINAL_STATUSES): `deleted` is the tombstone
# of an erased job.
TERMINAL_STATUSES = frozenset({"completed", "failed", "canceled", "expired", "deleted"})
BATCH_TERMINAL_STATUSES = frozenset({"completed", "canceled"})


@dataclass(frozen=True)
class JobError:
    code: str
    message: str


@dataclass(frozen=True)
class Job:
    """One photo's job: the 202 answer to a submission, GET images/{id}/, a callback body, or a
    line of a batch's results. Fields the answer did not carry are None (or empty)."""

    id: str
    status: str
    request_id: str | None = None
    status_url: str | None = None
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    model_version: str | None = None
    width: int | None = None
    height: int | None = None
    face_count: int | None = None
    faces: list[dict[str, Any]] = field(default_factory=list)
    detection_count: int | None = None
    detections: list[dict[str, Any]] = field(default_factory=list)
    labels: list[str] | None = None
    error: JobError | None = None
    output_image_url: str | None = None
    image_url: str | None = None
    expires_at: str | None = None
    batch_id: str | None = None
    callback: dict[str, Any] | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_terminal(self) -> bool:
        """True once the job can change no more (completed, failed, canceled, expired, deleted)."""
        return self.status in TERMINAL_STATUSES

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Job:
        error = data.get("error")
        return cls(
            id=data["id"],
            status=data["status"],
            request_id=data.get("request_id"),
            status_url=data.get("status_url"),
            created_at=data.get("created_at"),
            started_at=data.get("started_at"),
            finished_at=data.get("finished_at"),
            model_version=data.get("model_version"),
            width=data.get("width"),
            height=data.get("height"),
            face_count=data.get("face_count"),
            faces=list(data.get("faces") or []),
            detection_count=data.get("detection_count"),
            detections=list(data.get("detections") or []),
            labels=data.get("labels"),
            error=JobError(code=error.get("code", ""), message=error.get("message", "")) if isinstance(error, dict) else None,
            output_image_url=data.get("output_image_url"),
            image_url=data.get("image_url"),
            expires_at=data.get("expires_at"),
            batch_id=data.get("batch_id"),
            callback=data.get("callback"),
            raw=data,
        )


@dataclass(frozen=True)
class BatchItem:
    """One photo of a batch, fetched by the service from ``image_url``."""

    request_id: str
    image_url: str
    model_version: str | None = None
    labels: list[str] | str | None = None
    cohort: str | None = None


@dataclass(frozen=True)
class Batch:
    """A batch: the 202 answer to POST batches/ (id, status, item_count and the URLs), or GET
    batches/{id}/ (also counts by status, times, and the first page of its jobs in ``items``)."""

    id: str
    status: str
    item_count: int | None = None
    counts: dict[str, int] = field(default_factory=dict)
    status_url: str | None = None
    results_url: str | None = None
    callback_url: str | None = None
    created_at: str | None = None
    expires_at: str | None = None
    canceled_at: str | None = None
    finished_at: str | None = None
    items: list[Job] = field(default_factory=list)
    next: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_terminal(self) -> bool:
        """True once every item has ended: ``completed``, or ``canceled`` for a batch canceled (a
        canceled batch stays ``running`` until its items already being detected finish)."""
        return self.status in BATCH_TERMINAL_STATUSES

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Batch:
        return cls(
            id=data["id"],
            status=data["status"],
            item_count=data.get("item_count"),
            counts=dict(data.get("counts") or {}),
            status_url=data.get("status_url"),
            results_url=data.get("results_url"),
            callback_url=data.get("callback_url"),
            created_at=data.get("created_at"),
            expires_at=data.get("expires_at"),
            canceled_at=data.get("canceled_at"),
            finished_at=data.get("finished_at"),
            items=[Job.from_json(item) for item in data.get("items") or []],
            next=data.get("next"),
            raw=data,
        )
