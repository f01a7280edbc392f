"""The admin: operators see jobs, faces, photos, deliveries, keys and versions."""

from urllib.parse import urlencode

import pytest
from django.contrib.auth.models import User

from callbacks import services as delivery
from callbacks.models import CallbackDelivery
from jobs import services
from jobs.models import Image
from tests.conftest import photo_bytes, upload

pytestmark = [pytest.mark.django_db]


@pytest.fixture
def staff_client(client):
    User.objects.create_superuser("ops", "ops@example.com", "pw")
    client.login(username="ops", password="pw")
    return client


@pytest.fixture
def finished(api_client, s3, monkeypatch, stub_detector, receiver):
    monkeypatch.setattr("jobs.services.submission.image_job_enqueue", lambda *, image_id: None)
    image_id = upload(api_client, photo_bytes("astronaut_1face.png"), request_id="admin-job", callback_url=receiver.url()).json()["id"]
    services.image_job_detect(image_id=image_id)
    services.image_job_annotate(image_id=image_id)
    delivery.callback_delivery_attempt(delivery_id=services.image_job_callback_delivery(image_id=image_id).id)
    return Image.objects.get(id=image_id)


def test_job_list_filters_and_search(staff_client, finished):
    by_version = "?" + urlencode({"model_version": finished.model_version})
    for query in ("", "?status__exact=completed", by_version, "?q=admin-job"):
        response = staff_client.get(f"/admin/jobs/image/{query}")
        assert response.status_code == 200 and b"admin-job" in response.content, query


def test_job_page_shows_faces_photos_and_delivery(staff_client, finished):
    page = staff_client.get(f"/admin/jobs/image/{finished.id}/change/")
    assert page.status_code == 200
    html = page.content.decode()
    assert f"/admin/jobs/image/{finished.id}/photo/original/" in html
    assert f"/admin/jobs/image/{finished.id}/photo/annotated/" in html
    assert "box_width" in html or "Box width" in html  # the faces inline
    assert CallbackDelivery.objects.get(image=finished).webhook_id in html
    photo = staff_client.get(f"/admin/jobs/image/{finished.id}/photo/annotated/")
    assert photo.status_code == 200 and b"".join(photo.streaming_content)[:3] == b"\xff\xd8\xff"


def test_redeliver_action(staff_client, finished):
    response = staff_client.post(
        "/admin/jobs/image/", {"action": "redeliver_callback", "_selected_action": [str(finished.id)]}, follow=True
    )
    assert response.status_code == 200
    assert CallbackDelivery.objects.filter(image=finished).count() == 2


def test_other_admin_pages_render(staff_client, finished):
    delivery_id = CallbackDelivery.objects.get(image=finished).id
    for path in (
        "/admin/callbacks/callbackdelivery/",
        f"/admin/callbacks/callbackdelivery/{delivery_id}/change/",
        "/admin/clients/apiclient/",
        "/admin/registry/detectorversion/",
        "/admin/registry/detectorversion/mtcnn@1.1.0/change/",
    ):
        assert staff_client.get(path).status_code == 200, path


def test_activate_action_switches_the_version(staff_client):
    from registry.services import detector_version_active

    staff_client.post("/admin/registry/detectorversion/", {"action": "activate", "_selected_action": ["mtcnn@1.1.0"]})
    assert detector_version_active().id == "mtcnn@1.1.0"


def test_admin_addresses_from_before_the_split_redirect(staff_client, finished):
    """/admin/api/<model>/... (bookmarks from before the domain apps) lead to the same page."""
    response = staff_client.get(f"/admin/api/image/{finished.id}/change/?x=1")
    assert response.status_code == 301 and response["Location"] == f"/admin/jobs/image/{finished.id}/change/?x=1"
    assert staff_client.get("/admin/api/detectorversion/").url == "/admin/registry/detectorversion/"
    assert staff_client.get(response["Location"]).status_code == 200
    assert staff_client.get("/admin/api/nosuchmodel/").status_code == 404


def test_dead_letters_are_listed_and_shown(staff_client, finished):
    """The sweeper's records of messages that gave up: task, subject and error, list and page."""
    letter = services.dead_letter_record(
        task=services.DELIVER_RESULT_TASK, args=[str(finished.id)], task_id="t-1", retries=6, error="OperationalError: gone"
    )
    listed = staff_client.get("/admin/jobs/deadletter/")
    assert listed.status_code == 200 and str(finished.id) in listed.content.decode()
    page = staff_client.get(f"/admin/jobs/deadletter/{letter.id}/change/")
    assert page.status_code == 200 and "OperationalError: gone" in page.content.decode()


def test_batch_list_shows_counts_by_status(staff_client, api_client, monkeypatch):
    """Admin: Batches lists each batch with its items' counts; a batch's page shows its callback deliveries."""
    monkeypatch.setattr("jobs.services.batches.batch_items_enqueue", lambda *, image_ids: None)
    items = [{"request_id": f"adm-{i}", "image_url": f"http://127.0.0.1:9/{i}.jpg"} for i in range(5)]
    batch_id = api_client.post("/api/v1/batches/", {"items": items}, format="json").json()["id"]
    first, second = Image.objects.filter(batch_id=batch_id).order_by("id")[:2]
    Image.objects.filter(id=first.id).update(status="completed")
    Image.objects.filter(id=second.id).update(status="failed")
    response = staff_client.get("/admin/jobs/batch/")
    assert response.status_code == 200
    row = response.content.decode()
    assert batch_id in row
    assert '<td class="field-completed">1</td>' in row and '<td class="field-failed">1</td>' in row
    assert '<td class="field-open">3</td>' in row
    assert staff_client.get(f"/admin/jobs/batch/{batch_id}/change/").status_code == 200
