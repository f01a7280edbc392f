"""A database made by the release before the split into domain apps migrates forward with every row.

The old schema is rebuilt for real (the migration executor takes the database back to the
`api` app's 0001), filled through the historical models, then migrated to the latest state.
"""

import datetime as dt
import uuid

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

pytestmark = [pytest.mark.django_db(transaction=True)]

# The state of the release before the split: the `api` app alone had the models.
PREVIOUS_RELEASE = [("api", "0001_initial"), ("clients", None), ("registry", None), ("jobs", None), ("callbacks", None)]


def _migrate(targets):
    """Migrate the test database to ``targets``; the models as they are there (historical)."""
    MigrationExecutor(connection).migrate(targets)
    loader = MigrationExecutor(connection).loader  # a fresh one sees what is applied now
    return loader.project_state(list(loader.applied_migrations)).apps


def _latest():
    executor = MigrationExecutor(connection)
    return executor.loader.graph.leaf_nodes()


@pytest.fixture
def old_database():
    """The previous release's schema with rows in every table; the latest schema again after."""
    old_apps = _migrate(PREVIOUS_RELEASE)
    yield old_apps
    _migrate(_latest())


def _fill(apps) -> dict:
    """Rows as the previous release wrote them: a client and a key, versions and the active
    pointer, a job with faces, a delivery with an attempt, and content types for the admin."""
    from clients.services import _hash

    ContentType = apps.get_model("contenttypes", "ContentType")
    ApiClient = apps.get_model("api", "ApiClient")
    ApiKey = apps.get_model("api", "ApiKey")
    DetectorVersion = apps.get_model("api", "DetectorVersion")
    ActiveDetector = apps.get_model("api", "ActiveDetector")
    Image = apps.get_model("api", "Image")
    Face = apps.get_model("api", "Face")
    CallbackDelivery = apps.get_model("api", "CallbackDelivery")
    CallbackAttempt = apps.get_model("api", "CallbackAttempt")

    content_type = ContentType.objects.get_or_create(app_label="api", model="image")[0]
    client = ApiClient.objects.create(name="old-client")
    key = "fda_0ldk3y00_" + "x" * 43
    ApiKey.objects.create(client=client, prefix="0ldk3y00", key_hash=_hash(key))
    version = DetectorVersion.objects.create(
        id="mtcnn@0.9.0",
        name="mtcnn",
        version="0.9.0",
        implementation="mtcnn",
        weights=[{"file": "pnet.pt", "sha256": "0" * 64}],
        settings={"min_face_size": 20},
        settings_hash="h",
    )
    ActiveDetector.objects.update_or_create(id=1, defaults={"version": version})
    image = Image.objects.create(
        id=uuid.uuid4(),
        client=client,
        request_id="before-the-split",
        callback_url="https://example.com/hook",
        original_key="originals/2026/11/22/x.jpg",
        original_content_type="image/jpeg",
        original_size=123,
        original_sha256="a" * 64,
        status="completed",
        detector_version=version,
        model_version="mtcnn@0.9.0+weights.00000000",
        width=640,
        height=480,
        face_count=2,
        finished_at=timezone.now(),
    )
    for index in range(2):
        Face.objects.create(
            image=image,
            detector_version=version,
            index=index,
            box_x=10 * index,
            box_y=5,
            box_width=40,
            box_height=50,
            confidence=0.99 - index / 10,
            landmarks={"nose": [20.0, 30.0]},
        )
    delivery = CallbackDelivery.objects.create(
        image=image,
        webhook_id="msg_old",
        url=image.callback_url,
        body="{}",
        status="delivered",
        attempt_count=1,
        finished_at=timezone.now(),
    )
    CallbackAttempt.objects.create(
        delivery=delivery, number=1, started_at=timezone.now() - dt.timedelta(seconds=1), duration_ms=40, status_code=200
    )
    return {"key": key, "image_id": image.id, "content_type_id": content_type.id}


def test_every_row_survives_the_split_and_still_works(old_database):
    """Clients, keys, versions, the active pointer, jobs, faces, deliveries and attempts are all
    there after migrating, under the new apps, and the old key still authenticates."""
    before = _fill(old_database)
    _migrate(_latest())

    from django.contrib.contenttypes.models import ContentType

    from callbacks.models import CallbackAttempt, CallbackDelivery
    from clients.models import ApiClient
    from clients.services import api_key_check
    from jobs.models import Face, Image
    from registry.models import DetectorVersion
    from registry.services import detector_version_active

    image = Image.objects.get(id=before["image_id"])
    assert image.request_id == "before-the-split" and image.client.name == "old-client"
    assert image.detector_version_id == "mtcnn@0.9.0" and image.face_count == 2
    assert [f.box_x for f in Face.objects.filter(image=image)] == [0, 10]
    # Labels came later: every old detection is a face, every old version a face detector, and
    # an old job asked for every label.
    assert {f.label for f in Face.objects.filter(image=image)} == {"face"} and image.labels == []
    assert DetectorVersion.objects.get(id="mtcnn@0.9.0").labels == ["face"]
    delivery = CallbackDelivery.objects.get(image=image)
    assert delivery.webhook_id == "msg_old" and image.latest_delivery == delivery
    # The outbox took alerts later: an old delivery is its job's callback, as it was.
    assert delivery.kind == "callback" and delivery.image_id == image.id and delivery.subject == ""
    assert CallbackAttempt.objects.get(delivery=delivery).status_code == 200
    assert DetectorVersion.objects.filter(id="mtcnn@0.9.0").exists()
    assert detector_version_active().id == "mtcnn@0.9.0"
    assert ApiClient.objects.filter(name="old-client").exists()
    row = api_key_check(before["key"])
    assert row is not None and row.client.name == "old-client"
    # The admin's records keep their content type: renamed in place, same id.
    assert ContentType.objects.get(id=before["content_type_id"]).app_label == "jobs"


def test_the_api_client_answers_with_a_key_from_before_the_split(old_database, client):
    """End to end: the old key reads the old job over HTTP after migrating."""
    before = _fill(old_database)
    _migrate(_latest())

    response = client.get(f"/api/v1/images/{before['image_id']}/", HTTP_X_API_KEY=before["key"])
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["request_id"] == "before-the-split" and body["face_count"] == 2 and len(body["faces"]) == 2
    assert body["detection_count"] == 2 and [d["label"] for d in body["detections"]] == ["face", "face"]
    assert body["labels"] is None
    assert body["callback"]["status"] == "delivered" and body["callback"]["webhook_id"] == "msg_old"
