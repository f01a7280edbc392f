"""Fixtures of the rollouts tests: an operator's key, a client for it, and a live rollout."""

import io
import itertools

import pytest
from PIL import Image as PILImage

_names = itertools.count()


@pytest.fixture
def operator_name() -> str:
    return f"ops-{next(_names)}"


@pytest.fixture
def operator_key(db, operator_name) -> str:
    """A fresh operator's API key (create_api_key NAME --operator)."""
    from clients.services import api_key_create

    return api_key_create(client_name=operator_name, operator=True)[1]


@pytest.fixture
def operator(operator_key):
    """An API client authenticated with an operator's key."""
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_X_API_KEY=operator_key)
    return client


CANDIDATE = "mtcnn@1.1.0"  # shipped and registered by the autouse registry fixture; 1.0.0 is active
BASELINE = "mtcnn@1.0.0"


@pytest.fixture
def canary(operator):
    """A running canary of mtcnn@1.1.0 in two stages (5 %, then 25 %), started over HTTP."""
    response = operator.post(
        "/api/v1/rollouts/",
        {"candidate": CANDIDATE, "mode": "canary", "stages": [{"weight": 5}, {"weight": 25}]},
        format="json",
    )
    assert response.status_code == 201, response.json()
    return response.json()


def png_bytes(seed: int = 0) -> bytes:
    """A small valid PNG (the job's routing does not look at the pixels)."""
    buffer = io.BytesIO()
    PILImage.new("RGB", (64, 48), (seed % 256, 120, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def finished_jobs(rollout_id, variant: str, *, count: int, detection_ms: int, failed: int = 0) -> None:
    """Job rows of a rollout's variant that finished just now (seeded: the figures read rows)."""
    from django.utils import timezone

    from clients.models import ApiClient
    from jobs.models import Image

    client, _ = ApiClient.objects.get_or_create(name="seeded-jobs")
    version = CANDIDATE if variant == "candidate" else BASELINE
    now = timezone.now()
    for number in range(count):
        Image.objects.create(
            client=client,
            request_id=f"{variant}-{number}-{now.timestamp()}",
            original_key=f"originals/{variant}-{number}.png",
            original_content_type="image/png",
            original_size=1,
            original_sha256="0" * 64,
            detector_version_id=version,
            status="failed" if number < failed else "completed",
            face_count=None if number < failed else 1,
            detection_ms=None if number < failed else detection_ms,
            rollout_id=rollout_id,
            variant=variant,
            finished_at=now,
        )
