"""A batch on real services: 200 photos by URL from a loopback server -> the batch queue ->
a real worker (MTCNN) -> one batch callback, verified by the official Standard Webhooks library,
and results that stream."""

import json
import time

import pytest
from django.conf import settings
from standardwebhooks.webhooks import Webhook

from callbacks.models import CallbackDelivery
from jobs.models import Batch, Image

pytestmark = [pytest.mark.django_db(transaction=True)]

ITEMS = 200
# The smallest test photo with a face (61 KB): the test is about the batch, not the detector.
PHOTO = "grace_hopper_1face.jpg"


def test_a_200_item_batch_ends_with_one_verified_callback_and_streams_its_results(api_client, worker, receiver, s3, photoserver):
    items = [{"request_id": f"e2e-batch-{i}", "image_url": photoserver.url(f"/photos/{PHOTO}?n={i}")} for i in range(ITEMS)]
    response = api_client.post("/api/v1/batches/", {"items": items, "callback_url": receiver.url("/batch")}, format="json")
    assert response.status_code == 202, response.content
    submitted = response.json()
    assert submitted["item_count"] == ITEMS

    [callback] = receiver.wait(1, timeout=900)
    # The official library checks the signature, the timestamp and the webhook id.
    payload = Webhook(settings.CALLBACK_SIGNING_SECRET).verify(callback["body"], callback["headers"])
    assert payload["type"] == "batch.completed" and payload["batch_id"] == submitted["id"]
    assert payload["status"] == "completed" and payload["item_count"] == ITEMS
    assert payload["counts"] == {"completed": ITEMS}, payload["counts"]
    assert payload["results_url"] == submitted["results_url"] and payload["finished_at"]

    # One callback only: no second one comes, and the outbox holds one delivery for the batch.
    time.sleep(2)
    assert receiver.received.empty()
    assert CallbackDelivery.objects.filter(batch_id=submitted["id"]).count() == 1
    assert not CallbackDelivery.objects.filter(image__batch_id=submitted["id"]).exists()

    results = api_client.get(submitted["results_url"].removeprefix("http://testserver"))
    assert results.status_code == 200 and results["Content-Type"] == "application/x-ndjson"
    lines = b"".join(results.streaming_content).decode().splitlines()
    assert len(lines) == ITEMS
    jobs = [json.loads(line) for line in lines]
    assert sorted(job["request_id"] for job in jobs) == sorted(item["request_id"] for item in items)
    for job in jobs:
        assert job["status"] == "completed", job
        assert job["face_count"] >= 1 and job["faces"]
        assert job["batch_id"] == submitted["id"] and job["image_url"].startswith(photoserver.base)

    detail = api_client.get(f"/api/v1/batches/{submitted['id']}/").json()
    assert detail["status"] == "completed" and detail["counts"] == {"completed": ITEMS}
    assert Batch.objects.get(id=submitted["id"]).finished_at is not None
    # Every item was fetched from the loopback server.
    assert photoserver.count("/photos/") >= ITEMS and Image.objects.filter(batch_id=submitted["id"]).count() == ITEMS
