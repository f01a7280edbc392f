"""Rows for the outbox tests: finished jobs and their deliveries, made without S3 or a detector."""

import time

from django.utils import timezone

from clients.services import api_key_create
from jobs import services
from jobs.models import Image, JobStatus
from registry.services import detector_version_active


def finished_jobs(url: str, count: int, prefix: str) -> list[int]:
    """``count`` completed jobs calling back to ``url``; the ids of their (committed) deliveries."""
    client = api_key_create(client_name=f"{prefix}-{time.monotonic_ns()}")[0].client
    version = detector_version_active()
    ids = []
    for n in range(count):
        job = Image.objects.create(
            client=client,
            request_id=f"{prefix}-{n}",
            callback_url=url,
            original_key=f"test/{prefix}-{n}",
            original_content_type="image/png",
            original_size=1,
            original_sha256="0" * 64,
            detector_version=version,
            model_version=version.id,
            status=JobStatus.COMPLETED,
            width=1,
            height=1,
            face_count=0,
            finished_at=timezone.now(),
        )
        ids.append(services.image_job_callback_delivery(image_id=job.id).id)
    return ids
