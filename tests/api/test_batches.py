"""/api/v1/batches/: a batch is checked as a whole (one bad item refuses it, nothing created),
read with counts and pages, streamed as JSON Lines, and seen by its own client only."""

import json

import pytest
from django.test import override_settings

from jobs.models import Batch, Image
from jobs.services import batches

pytestmark = [pytest.mark.django_db]


def items(n: int, prefix: str = "item", **extra) -> list[dict]:
    # Loopback: the tests open it for image_url (IMAGE_URL_ALLOWED_NETWORKS); nothing is fetched here.
    return [{"request_id": f"{prefix}-{i}", "image_url": f"http://127.0.0.1:9/{prefix}/{i}.jpg", **extra} for i in range(n)]


def submit(client, body, **kwargs):
    return client.post("/api/v1/batches/", body, format="json", **kwargs)


def assert_refused(response, status: int, field: str | None, code: str | None = None) -> dict:
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert error["field"] == field, error
    assert error["message"]
    if code:
        assert error["code"] == code, error
    assert Batch.objects.count() == 0 and Image.objects.count() == 0
    return error


@pytest.fixture
def published(monkeypatch):
    """The ids each committed batch would publish (no broker needed)."""
    ids = []
    monkeypatch.setattr(batches, "batch_items_enqueue", lambda *, image_ids: ids.extend(image_ids))
    return ids


def test_valid_batch_is_accepted_with_one_job_per_item_published_after_commit(api_client, published, django_capture_on_commit_callbacks):
    """202 with id, status_url, results_url, item_count, status; each item an ordinary queued job of the batch."""
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = submit(api_client, {"items": items(5, labels=["face"]), "callback_url": "http://127.0.0.1:9/hook", "expires_in": 600})
    assert response.status_code == 202, response.content
    body = response.json()
    assert set(body) == {"id", "status_url", "results_url", "item_count", "status"}
    assert (body["item_count"], body["status"]) == (5, "running")
    assert response["Location"] == body["status_url"] == f"http://testserver/api/v1/batches/{body['id']}/"
    assert body["results_url"] == f"http://testserver/api/v1/batches/{body['id']}/results/"
    jobs = list(Image.objects.filter(batch_id=body["id"]).order_by("request_id"))
    assert [job.request_id for job in jobs] == [f"item-{i}" for i in range(5)]
    for job in jobs:
        assert job.status == "queued" and job.image_url.startswith("http://127.0.0.1:9/item/")
        # The batch calls back; its items do not.
        assert job.callback_url == "" and job.labels == ["face"] and job.expires_at is not None
        assert job.model_version  # pinned when accepted
    assert Batch.objects.get(id=body["id"]).callback_url == "http://127.0.0.1:9/hook"
    assert published == [] and len(callbacks) == 1
    callbacks[0]()
    assert sorted(published) == sorted(job.id for job in jobs)


@pytest.mark.parametrize(
    ("bad", "field", "code"),
    [
        ({"image_url": "ftp://127.0.0.1/3.jpg"}, "items[3].image_url", "invalid_scheme"),
        ({"image_url": "http://10.0.0.1/3.jpg"}, "items[3].image_url", "image_url_refused"),
        ({"image_url": "http://user:pw@127.0.0.1/3.jpg"}, "items[3].image_url", "image_url_refused"),
        ({"image_url": "not a url"}, "items[3].image_url", None),
        ({"image_url": None}, "items[3].image_url", None),
        ({"request_id": ""}, "items[3].request_id", None),
        ({"request_id": "a\u202eb"}, "items[3].request_id", None),
        ({"labels": ["Not A Label"]}, "items[3].labels", None),
        ({"labels": ["cat"]}, "items[3].labels", "unsupported_label"),
        ({"model_version": "nope@9"}, "items[3].model_version", "unknown_model_version"),
        ({"cohort": "\x00"}, "items[3].cohort", None),
        ({"cohort": 0}, "items[3].cohort", "invalid"),
        ({"request_id": 17}, "items[3].request_id", "invalid"),
        ({"labels": "face"}, "items[3].labels", "invalid"),
    ],
)
def test_one_bad_item_refuses_the_whole_batch_naming_it(api_client, published, bad, field, code):
    """400 naming items[3].<field>; no batch and no job is made."""
    body = items(6)
    body[3].update(bad)
    assert_refused(submit(api_client, {"items": body}), 400, field, code)
    assert published == []


def test_an_item_without_image_url_is_refused_naming_it(api_client):
    body = items(3)
    del body[1]["image_url"]
    assert_refused(submit(api_client, {"items": body}), 400, "items[1].image_url", "required")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "items"),
        ({"items": []}, "items"),
        ({"items": "x"}, "items"),
        ({"items": [1, 2]}, "items[0]"),
        ({"items": [*items(1), "x"]}, "items[1]"),
        ({"items": items(1), "callback_url": "ftp://x"}, "callback_url"),
        ({"items": items(1), "expires_in": 0}, "expires_in"),
        ({"items": items(1), "expires_in": "60"}, "expires_in"),
        ({"items": items(1), "expires_in": 60.0}, "expires_in"),
        ({"items": items(1), "expires_in": 10**9}, "expires_in"),
    ],
)
def test_bad_batch_fields_are_refused_naming_the_field(api_client, body, field):
    assert_refused(submit(api_client, body), 400, field)


def test_a_body_that_is_not_a_json_object_is_refused(api_client):
    assert_refused(submit(api_client, [1, 2]), 400, "items")
    response = api_client.post("/api/v1/batches/", "{not json", content_type="application/json")
    assert response.status_code == 400 and Batch.objects.count() == 0


@override_settings(BATCH_MAX_ITEMS=3)
def test_more_than_batch_max_items_is_refused(api_client):
    assert_refused(submit(api_client, {"items": items(4)}), 400, "items", "too_many_items")


def test_a_request_id_repeated_within_the_batch_is_a_conflict_naming_the_item(api_client):
    body = items(4)
    body[2]["request_id"] = body[0]["request_id"]
    assert_refused(submit(api_client, {"items": body}), 409, "items[2].request_id", "request_id_conflict")


def test_a_request_id_used_before_is_a_conflict_naming_the_item(api_client, published):
    """A request_id the client used before (here in an earlier batch) refuses the new batch."""
    assert submit(api_client, {"items": items(2, prefix="old")}).status_code == 202
    body = items(3, prefix="new")
    body[1]["request_id"] = "old-1"
    response = submit(api_client, {"items": body})
    assert response.status_code == 409
    assert response.json()["error"]["field"] == "items[1].request_id"
    assert Batch.objects.count() == 1 and Image.objects.count() == 2


def test_the_same_batch_posted_again_answers_the_first_batch(api_client, published):
    """A retried POST (every item already the same item of one batch) makes nothing twice: 200."""
    first = submit(api_client, {"items": items(3)})
    again = submit(api_client, {"items": items(3)})
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["id"] == first.json()["id"]
    assert Batch.objects.count() == 1 and Image.objects.count() == 3
    # A subset of those items is another batch, not a retry: its request_ids are used.
    assert submit(api_client, {"items": items(2)}).status_code == 409


def test_batch_detail_has_counts_and_pages_of_items(api_client, published):
    batch_id = submit(api_client, {"items": items(5)}).json()["id"]
    first = Image.objects.filter(batch_id=batch_id).order_by("created_at", "id").first()
    Image.objects.filter(id=first.id).update(status="failed", error_code="image_fetch_failed", error_message="no")
    body = api_client.get(f"/api/v1/batches/{batch_id}/?page_size=2").json()
    assert body["status"] == "running" and body["item_count"] == 5
    assert body["counts"] == {"queued": 4, "failed": 1}
    assert body["finished_at"] is None and body["callback_url"] is None
    assert [item["id"] for item in body["items"]][0] == str(first.id) and len(body["items"]) == 2
    assert body["next"] and "page=2" in body["next"]
    seen = [item["request_id"] for item in body["items"]]
    while body["next"]:
        body = api_client.get(body["next"]).json()
        seen += [item["request_id"] for item in body["items"]]
    assert sorted(seen) == [f"item-{i}" for i in range(5)]


def test_results_stream_one_job_per_line(api_client, published):
    batch_id = submit(api_client, {"items": items(7)}).json()["id"]
    response = api_client.get(f"/api/v1/batches/{batch_id}/results/")
    assert response.status_code == 200 and response["Content-Type"] == "application/x-ndjson"
    assert response.streaming
    lines = b"".join(response.streaming_content).decode().splitlines()
    jobs = [json.loads(line) for line in lines]
    assert sorted(job["request_id"] for job in jobs) == [f"item-{i}" for i in range(7)]
    assert all(job["status"] == "queued" and job["faces"] == [] for job in jobs)


def test_results_are_read_in_chunks(api_client, published, monkeypatch):
    """The stream reads its rows chunk by chunk (a server-side cursor), not all at once."""
    batch_id = submit(api_client, {"items": items(5)}).json()["id"]
    sizes = []
    real = batches.batch_results

    def spy(*, batch_id, chunk_size=500):
        sizes.append(chunk_size)
        return real(batch_id=batch_id, chunk_size=2)

    monkeypatch.setattr(batches, "batch_results", spy)
    monkeypatch.setattr("jobs.services.batch_results", spy)
    lines = b"".join(api_client.get(f"/api/v1/batches/{batch_id}/results/").streaming_content).splitlines()
    assert len(lines) == 5 and sizes == [500]


def test_another_clients_batch_is_not_found(api_client, published):
    from rest_framework.test import APIClient

    from clients.services import api_key_create

    batch_id = submit(api_client, {"items": items(2)}).json()["id"]
    other = APIClient()
    other.credentials(HTTP_X_API_KEY=api_key_create(client_name="other")[1])
    for method, path in (
        ("get", f"/api/v1/batches/{batch_id}/"),
        ("get", f"/api/v1/batches/{batch_id}/results/"),
        ("post", f"/api/v1/batches/{batch_id}/cancel/"),
        ("get", "/api/v1/batches/not-a-uuid/"),
    ):
        response = getattr(other, method)(path)
        assert response.status_code == 404, (method, path)
        assert response.json()["error"]["code"] == "not_found"
    assert Image.objects.filter(batch_id=batch_id, status="queued").count() == 2


def test_batches_need_an_api_key(anonymous_client):
    assert submit(anonymous_client, {"items": items(1)}).status_code == 401


def test_a_batch_larger_than_djangos_body_limit_is_accepted(api_client, published):
    """3,000 presigned-looking URLs (about 3 MB of JSON, past Django's 2.5 MB for other routes)."""
    body = [{"request_id": f"big-{i}", "image_url": f"http://127.0.0.1:9/b/{i}.jpg?X-Amz-Signature={'a' * 1000}"} for i in range(3000)]
    response = api_client.post("/api/v1/batches/", json.dumps({"items": body}), content_type="application/json")
    assert response.status_code == 202, response.content[:300]
    assert Image.objects.filter(batch_id=response.json()["id"]).count() == 3000


@override_settings(BATCH_MAX_ITEMS=2)
def test_a_body_larger_than_the_batch_limit_allows_is_refused_413(api_client):
    body = json.dumps({"items": items(1), "pad": "x" * (2 * 4096 + 64 * 1024)})
    response = api_client.post("/api/v1/batches/", body, content_type="application/json")
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"
    assert Batch.objects.count() == 0


def test_a_body_that_is_not_json_is_refused_415(api_client):
    response = api_client.post("/api/v1/batches/", {"items": "x"}, format="multipart")
    assert response.status_code == 415 and Batch.objects.count() == 0


def test_each_host_of_a_batch_is_checked_once(api_client, published, monkeypatch):
    """The address check (a name lookup) runs once per scheme and host, not once per item."""
    import api.serializers

    checked = []
    real = api.serializers.image_url_check
    monkeypatch.setattr(api.serializers, "image_url_check", lambda url: (checked.append(url), real(url))[1])
    body = items(4) + [{"request_id": f"other-{i}", "image_url": f"http://127.0.0.2:9/{i}.jpg"} for i in range(3)]
    assert submit(api_client, {"items": body}).status_code == 202
    assert len(checked) == 2


@override_settings(BATCH_MAX_ITEMS=3)
def test_a_flood_of_tiny_objects_is_refused_before_parsing(api_client, monkeypatch):
    """Many more JSON objects than BATCH_MAX_ITEMS items could hold never reach the parser
    (parsed, 40 MB of `{},` takes about 1 GB)."""
    body = json.dumps({"items": [{}] * 40})
    with monkeypatch.context() as patched:
        patched.setattr("api.batches.json.loads", lambda raw: pytest.fail("parsed"))
        response = api_client.post("/api/v1/batches/", body, content_type="application/json")
    assert_refused(response, 400, "items", "too_many_items")


def test_json_nested_too_deep_is_a_400_not_a_500(api_client):
    response = api_client.post("/api/v1/batches/", "[" * 5_000, content_type="application/json")
    assert response.status_code == 400 and response.json()["error"]["code"] == "parse_error"
    assert Batch.objects.count() == 0


def test_a_bad_label_names_the_item_and_its_index(api_client):
    body = {"items": [*items(1), {**items(1, "b")[0], "labels": ["face", "Not A Label"]}]}
    error = assert_refused(submit(api_client, body), 400, "items[1].labels")
    assert "ErrorDetail" not in error["message"]
    body = {"items": [*items(1), {**items(1, "b")[0], "labels": ["face", 7]}]}
    assert_refused(submit(api_client, body), 400, "items[1].labels")
