"""GET endpoints, probes and error shapes."""

import pytest

from jobs import services
from storage import s3 as storage
from tests.conftest import photo_bytes, upload

pytestmark = [pytest.mark.django_db]


@pytest.fixture
def completed(api_client, s3, settings, monkeypatch, stub_detector):
    monkeypatch.setattr("jobs.services.submission.image_job_enqueue", lambda *, image_id: None)
    image_id = upload(api_client, photo_bytes("astronaut_1face.png"), request_id="read").json()["id"]
    services.image_job_detect(image_id=image_id)
    return image_id


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/images/00000000-0000-0000-0000-000000000000/",
        "/api/v1/images/not-a-uuid/",
        "/api/v1/images/not-a-uuid/annotated/",
        "/api/v1/nothing-here/",
    ],
)
def test_unknown_ids_and_routes_are_404_json(api_client, path):
    """404 in the one error shape."""
    response = api_client.get(path)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_annotated_is_409_until_ready_then_served(api_client, completed):
    """Before annotation (a job whose detect task could not store it: the deliverer draws it):
    409 not_ready. After: the JPEG."""
    from jobs.models import Image

    Image.objects.filter(id=completed).update(annotated_key="")
    response = api_client.get(f"/api/v1/images/{completed}/annotated/")
    assert response.status_code == 409 and response.json()["error"]["code"] == "not_ready"
    services.image_job_annotate(image_id=completed)
    response = api_client.get(f"/api/v1/images/{completed}/annotated/")
    assert response.status_code == 200 and response["Content-Type"] == "image/jpeg"
    assert b"".join(response.streaming_content)[:3] == b"\xff\xd8\xff"


def test_annotated_of_a_failed_job_is_404_not_available(api_client, completed):
    """A failed job has no drawing: 404 not_available, in the one error shape."""
    from jobs.models import Image

    Image.objects.filter(id=completed).update(status="failed", error_code="internal_error", annotated_key="")
    response = api_client.get(f"/api/v1/images/{completed}/annotated/")
    assert response.status_code == 404
    assert response.json() == {"error": {"code": "not_available", "message": "The job failed; there is no annotated image.", "field": None}}


def test_annotated_gone_from_storage_is_404_and_storage_down_is_503(api_client, completed, settings, s3):
    """The object deleted behind the job's back: 404 not_available; the storage server unreachable: 503 storage_unavailable."""
    from jobs.models import Image

    services.image_job_annotate(image_id=completed)
    key = Image.objects.get(id=completed).annotated_key
    settings.S3_ENDPOINT = "127.0.0.1:9"
    storage.reset_clients()
    try:
        response = api_client.get(f"/api/v1/images/{completed}/annotated/")
    finally:
        settings.S3_ENDPOINT = s3.endpoint
        storage.reset_clients()
    assert response.status_code == 503
    assert response.json() == {"error": {"code": "storage_unavailable", "message": "Storage is unavailable; try again.", "field": None}}
    storage.storage_delete(key=key)
    response = api_client.get(f"/api/v1/images/{completed}/annotated/")
    assert response.status_code == 404
    assert response.json() == {"error": {"code": "not_available", "message": "The annotated image is missing from storage.", "field": None}}


def test_annotated_redirects_to_a_presigned_url_when_storage_is_public(api_client, completed, settings, s3):
    """With S3_PUBLIC_ENDPOINT, a 302 to a URL the client can fetch without credentials."""
    import requests

    services.image_job_annotate(image_id=completed)
    settings.S3_PUBLIC_ENDPOINT = s3.endpoint
    storage.reset_clients()
    response = api_client.get(f"/api/v1/images/{completed}/annotated/")
    assert response.status_code == 302
    assert "X-Amz-Expires=" in response["Location"]
    fetched = requests.get(response["Location"], timeout=10)
    assert fetched.status_code == 200 and fetched.content[:3] == b"\xff\xd8\xff"


def test_representation_has_numbers_not_strings(api_client, completed):
    """Box, confidence and landmarks are JSON numbers."""
    body = api_client.get(f"/api/v1/images/{completed}/").json()
    face = body["faces"][0]
    assert body["face_count"] == 1 and body["status"] == "completed"
    assert face["box"] == {"x": 128, "y": 128, "width": 256, "height": 256}
    assert isinstance(face["confidence"], float)
    assert face["landmarks"]["nose"] == [256.0, 256.0]
    assert body["error"] is None and body["callback"]["status"] == "none"
    assert body["callback"]["url"] is None and body["callback"]["attempts"] == []


def test_list_is_paginated(api_client, completed):
    """count, next, previous, results."""
    body = api_client.get("/api/v1/images/", {"page_size": 1}).json()
    assert set(body) == {"count", "next", "previous", "results"} and body["count"] == 1


def test_healthz_is_up(api_client):
    assert api_client.get("/healthz").json() == {"status": "ok"}


def test_readyz_is_ok_when_everything_answers(api_client, s3):
    """Database, broker and storage answer: 200."""
    from tests.conftest import require

    require("rabbitmq")
    response = api_client.get("/readyz")
    assert response.status_code == 200, response.json()
    assert response.json()["down"] == []


def test_readyz_names_what_is_down(api_client, s3, settings):
    """Storage and broker unreachable: 503 naming both."""
    settings.S3_ENDPOINT = "127.0.0.1:9"
    storage.reset_clients()
    settings.CELERY_BROKER_URL = "amqp://guest:guest@127.0.0.1:9//"
    try:
        response = api_client.get("/readyz")
    finally:
        settings.S3_ENDPOINT = s3.endpoint
        storage.reset_clients()
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable" and sorted(body["down"]) == ["broker", "storage"]
    assert body["checks"]["database"]["ok"] is True


@pytest.mark.parametrize("request_id", ["a\x00b", "x" * 129, "tab\t", "del\x7f", "c1\x85", "", " ", "\u00a0\u3000", "abc\u202etxt.exe"])
def test_a_bad_request_id_filter_is_a_400_not_a_500(api_client, request_id):
    """Found by schemathesis: a NUL in the filter reached PostgreSQL; an empty ?request_id= was
    read as no filter at all (200 with every job) though the schema says minLength 1."""
    response = api_client.get("/api/v1/images/", {"request_id": request_id})
    assert response.status_code == 400 and response.json()["error"]["field"] == "request_id"
    if not request_id.strip():
        assert response.json()["error"]["code"] == "blank"


@pytest.mark.parametrize(
    "request_id", ["read", "nbsp\u00a0inside", "zero\u200bwidth", "private\ue000", "unassigned\U000e0080", "line\u2028sep", "😀"]
)
def test_a_request_id_filter_takes_any_characters_but_controls(api_client, request_id):
    """Found by schemathesis: "printable only" (str.isprintable) was stricter than the schema
    said. The rule is now the schema's pattern, which accepts these."""
    response = api_client.get("/api/v1/images/", {"request_id": request_id})
    assert response.status_code == 200 and response.json()["count"] == 0


# The Bidi_Control characters: the three marks, embeddings and overrides, isolates.
BIDI_CONTROLS = {"\u061c", "\u200e", "\u200f", *map(chr, range(0x202A, 0x202F)), *map(chr, range(0x2066, 0x206A))}


def test_the_request_id_rule_only_adds_to_what_was_accepted():
    """Every code point, alone and inside an id: what the old rule (str.isprintable, not blank)
    accepted is accepted; controls (C0, DEL, C1), bidi formatting characters and whitespace-only
    ids are refused."""
    import unicodedata

    from api.serializers import REQUEST_ID_RE

    for code in range(0x110000):
        c = chr(code)
        accepted_alone = REQUEST_ID_RE.fullmatch(c) is not None
        accepted_inside = REQUEST_ID_RE.fullmatch(f"a{c}b") is not None
        if unicodedata.bidirectional(c) in {"LRE", "RLE", "PDF", "LRO", "RLO", "LRI", "RLI", "FSI", "PDI"}:
            assert c in BIDI_CONTROLS, hex(code)  # every explicit formatting character is named
        if unicodedata.category(c) == "Cc" or c in BIDI_CONTROLS:
            assert not accepted_alone and not accepted_inside, hex(code)
            continue
        assert accepted_inside, hex(code)
        assert accepted_alone == (not c.isspace()), hex(code)
        if c.isprintable() and c.strip():
            assert accepted_alone, hex(code)


def test_a_lone_surrogate_is_refused_not_a_500():
    """Cannot arrive over HTTP (UTF-8), but a str from elsewhere must not reach the database."""
    from api.serializers import ImageListQuerySerializer

    query = ImageListQuerySerializer(data={"request_id": "a\ud800b"})
    assert not query.is_valid() and query.errors["request_id"][0].code == "invalid"
