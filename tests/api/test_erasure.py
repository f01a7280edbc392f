"""DELETE /api/v1/images/{id}/: the owner erases a job's photo, annotated image and detections at
once; a tombstone stays; nobody else can; nothing still running brings any of it back."""

import pytest

from callbacks import services as delivery
from callbacks.models import DeliveryStatus
from jobs import retention, services
from jobs.erasure import image_job_erase
from jobs.models import Face, Image, JobStatus
from storage import s3 as storage
from tests.conftest import photo_bytes, store_status, upload

pytestmark = [pytest.mark.django_db]


@pytest.fixture
def enqueue_off(monkeypatch, s3, stub_detector):
    monkeypatch.setattr("jobs.services.submission.image_job_enqueue", lambda *, image_id: None)


def submit(api_client, request_id: str, **fields) -> Image:
    response = upload(api_client, photo_bytes("astronaut_1face.png"), request_id=request_id, **fields)
    assert response.status_code == 202, response.content
    return Image.objects.get(id=response.json()["id"])


def finished(api_client, request_id: str, **fields) -> Image:
    job = submit(api_client, request_id, **fields)
    services.image_job_detect(image_id=job.id)
    services.image_job_annotate(image_id=job.id)
    return Image.objects.get(id=job.id)


def test_the_owner_erases_both_objects_and_the_detections(api_client, enqueue_off):
    """Both keys answer 404 from the store right after the DELETE; the faces are gone; what is
    left is the tombstone, which GET still shows."""
    job = finished(api_client, "erase-me")
    original, annotated = job.original_key, job.annotated_key
    assert store_status(original) == 200 and store_status(annotated) == 200 and Face.objects.filter(image=job).exists()

    response = api_client.delete(f"/api/v1/images/{job.id}/")

    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["id"], body["request_id"], body["status"]) == (str(job.id), "erase-me", "deleted")
    assert body["faces"] == [] and body["detections"] == [] and body["output_image_url"] is None
    assert store_status(original) == 404 and store_status(annotated) == 404
    assert not Face.objects.filter(image=job).exists()
    job.refresh_from_db()
    assert job.deleted_at is not None and (job.original_key, job.annotated_key, job.original_sha256) == ("", "", "")
    assert job.width is None and job.original_filename == "" and job.cohort == ""
    assert api_client.get(f"/api/v1/images/{job.id}/").json()["status"] == "deleted"
    gone = api_client.get(f"/api/v1/images/{job.id}/annotated/")
    assert gone.status_code == 410 and gone.json()["error"]["code"] == "deleted"


def test_another_clients_delete_is_a_404_and_erases_nothing(api_client, enqueue_off):
    from rest_framework.test import APIClient

    from clients.services import api_key_create

    job = finished(api_client, "not-yours")
    other = APIClient()
    other.credentials(HTTP_X_API_KEY=api_key_create(client_name="someone-else")[1])

    response = other.delete(f"/api/v1/images/{job.id}/")

    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    assert store_status(job.original_key) == 200 and store_status(job.annotated_key) == 200
    assert Image.objects.get(id=job.id).status == JobStatus.COMPLETED


def test_deleting_twice_answers_the_same(api_client, enqueue_off):
    job = finished(api_client, "twice")
    first = api_client.delete(f"/api/v1/images/{job.id}/")
    second = api_client.delete(f"/api/v1/images/{job.id}/")
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()


def test_resubmitting_an_erased_request_id_returns_the_tombstone_and_stores_nothing(api_client, enqueue_off):
    """The request_id stays spent: a replayed upload never puts the photo back."""
    job = finished(api_client, "replayed")
    api_client.delete(f"/api/v1/images/{job.id}/")
    assert storage.storage_list(prefix="originals/") == []

    again = upload(api_client, photo_bytes("astronaut_1face.png"), request_id="replayed")

    assert again.status_code == 200, again.content
    assert (again.json()["id"], again.json()["status"]) == (str(job.id), "deleted")
    assert storage.storage_list(prefix="originals/") == []
    assert Image.objects.filter(request_id="replayed").count() == 1


def test_a_pending_callback_is_cancelled_and_its_body_blanked(api_client, enqueue_off, receiver):
    """The delivery fails with the reason, nothing is sent any more, and no copy of the
    detections stays in the outbox."""
    job = finished(api_client, "calling-back", callback_url=receiver.url())
    pending = services.image_job_callback_delivery(image_id=job.id)
    assert '"faces":[{' in pending.body

    api_client.delete(f"/api/v1/images/{job.id}/")

    pending.refresh_from_db()
    assert pending.status == DeliveryStatus.FAILED and "erased" in pending.last_error and pending.body == ""
    assert delivery.callback_delivery_attempt(delivery_id=pending.id) is None
    assert receiver.received.empty()  # the attempt above returned without sending
    assert services.image_job_callback_delivery(image_id=job.id) is None  # the chain makes no new one
    redeliver = api_client.post(f"/api/v1/images/{job.id}/redeliver/")
    assert redeliver.status_code == 409 and redeliver.json()["error"]["code"] == "deleted"


def test_a_job_erased_mid_detection_gets_no_detections_or_annotated_image(api_client, enqueue_off):
    """The worker started before the DELETE and finishes after it: it writes nothing back."""
    job = submit(api_client, "mid-flight")
    assert services.image_job_start(image_id=job.id) is not None
    image_job_erase(image_id=job.id)

    stored = services.image_job_complete(
        image_id=job.id, faces=[services.FaceData(1, 1, 5, 5, 0.9, {})], model_version="stub@0.0.0", width=512, height=512
    )
    services.image_job_annotate(image_id=job.id)

    assert stored is False and not Face.objects.filter(image=job).exists()
    assert Image.objects.get(id=job.id).status == JobStatus.DELETED
    assert storage.storage_list(prefix="annotated/") == [] and storage.storage_list(prefix="originals/") == []


def test_an_annotated_image_drawn_while_the_job_was_erased_is_deleted(api_client, enqueue_off, monkeypatch):
    """The DELETE lands between the deliverer reading the job and storing its drawing (its
    fallback, for a job detected without one): the worker deletes what it stored."""
    job = submit(api_client, "drawn-meanwhile")
    services.image_job_detect(image_id=job.id)
    storage.storage_delete(key=Image.objects.get(id=job.id).annotated_key)
    Image.objects.filter(id=job.id).update(annotated_key="")
    real_put = storage.storage_put

    def erase_then_put(**kwargs):
        image_job_erase(image_id=job.id)
        real_put(**kwargs)

    monkeypatch.setattr("storage.s3.storage_put", erase_then_put)
    services.image_job_annotate(image_id=job.id)

    assert storage.storage_list(prefix="annotated/") == []
    assert store_status(services.annotated_object_key(job)) == 404


def test_an_annotated_image_drawn_by_the_detect_task_while_the_job_was_erased_is_deleted(api_client, enqueue_off, monkeypatch):
    """The DELETE lands while the detect task stores its drawing: the job is not completed and
    the drawing is deleted."""
    job = submit(api_client, "drawn-in-detect-meanwhile")
    real_put = storage.storage_put

    def erase_then_put(**kwargs):
        image_job_erase(image_id=job.id)
        real_put(**kwargs)

    monkeypatch.setattr("storage.s3.storage_put", erase_then_put)
    services.image_job_detect(image_id=job.id)

    assert Image.objects.get(id=job.id).status == "deleted"
    assert storage.storage_list(prefix="annotated/") == []
    assert store_status(services.annotated_object_key(job)) == 404


def test_the_admin_erases_the_same_way(api_client, enqueue_off, client):
    from django.contrib.auth.models import User

    User.objects.create_superuser("ops", "ops@example.com", "pw")
    client.login(username="ops", password="pw")
    job = finished(api_client, "by-the-operator")

    response = client.post("/admin/jobs/image/", {"action": "erase", "_selected_action": [str(job.id)]})

    assert response.status_code == 302
    assert Image.objects.get(id=job.id).status == JobStatus.DELETED
    assert store_status(job.original_key) == 404 and store_status(job.annotated_key) == 404
    assert client.get(f"/admin/jobs/image/{job.id}/photo/original/").status_code == 410


def test_a_store_that_refuses_the_deletion_is_a_503_and_the_sweep_finishes_it(api_client, enqueue_off, settings, s3):
    """The job is a tombstone at once; its objects go when the store is back (retention's sweep)."""
    job = finished(api_client, "store-down")
    settings.S3_ENDPOINT = "127.0.0.1:9"
    storage.reset_clients()
    try:
        response = api_client.delete(f"/api/v1/images/{job.id}/")
    finally:
        settings.S3_ENDPOINT = s3.endpoint
        storage.reset_clients()
    assert response.status_code == 503 and response.json()["error"]["code"] == "storage_unavailable"
    assert int(response["Retry-After"]) > 0
    assert Image.objects.get(id=job.id).status == JobStatus.DELETED
    assert store_status(job.original_key) == 200

    assert retention.retention_sweep()["erasures"] == 1
    assert store_status(job.original_key) == 404 and store_status(job.annotated_key) == 404
    assert Image.objects.get(id=job.id).original_key == ""


def test_the_schema_documents_the_delete_and_the_deleted_status(api_client):
    """DELETE on a job, its answers, the `deleted` status in the job's enum and 410 on the
    annotated image are all in the OpenAPI schema (schemathesis checks the API against it)."""
    schema = api_client.get("/api/schema/?format=json").json()
    operation = schema["paths"]["/api/v1/images/{image_id}/"]["delete"]
    assert operation["operationId"] == "images_delete"
    assert {"200", "401", "404", "503"} <= set(operation["responses"])
    assert "deleted" in schema["components"]["schemas"]["JobStatusEnum"]["enum"]
    assert "410" in schema["paths"]["/api/v1/images/{image_id}/annotated/"]["get"]["responses"]
