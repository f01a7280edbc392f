"""/readyz tells the truth about the store: it must take a write, not only answer. A refused write
says why in the log and in fda_storage_errors_total, and an upload gets 503 with Retry-After.

The full and the missing stores here are servers of the tests' own, never the run's shared one.
"""

import io
import logging
import os

import pytest
import urllib3
from minio import Minio
from minio.error import S3Error

from api.health import storage_check_forget
from devstack.net import free_port_block
from devstack.seaweed import SeaweedS3
from storage import s3 as storage
from tests.conftest import photo_bytes, require, upload
from tests.observability.test_metrics import delta, scrape

pytestmark = [pytest.mark.django_db]


@pytest.fixture
def full_store(tmp_path, settings, s3):
    """An S3 server of this test's own whose one 1 MB volume is full: it answers reads and lists
    (the bucket exists) but refuses every write. The settings point at it for the test."""
    base = free_port_block(4)
    server = SeaweedS3(
        data_dir=tmp_path / "full-s3",
        access_key=settings.S3_ACCESS_KEY,
        secret_key=settings.S3_SECRET_KEY,
        s3_port=base + 3,
        base_port=base,
        volume_size_limit_mb=1,
        volume_max=1,
    ).start()
    try:
        http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=2, read=60))
        raw = Minio(
            server.endpoint, access_key=server.access_key, secret_key=server.secret_key, secure=False, region="us-east-1", http_client=http
        )
        raw.make_bucket(settings.S3_BUCKET)
        data = os.urandom(512 * 1024)
        for number in range(20):
            try:
                raw.put_object(settings.S3_BUCKET, f"filler-{number}", io.BytesIO(data), len(data))
            except S3Error:
                break
        else:
            pytest.fail("the store never filled up")
        settings.S3_ENDPOINT = server.endpoint
        storage.reset_clients()
        storage_check_forget()
        yield server
    finally:
        server.stop()
        settings.S3_ENDPOINT = s3.endpoint
        storage.reset_clients()
        storage_check_forget()


def test_readyz_writes_to_the_store_and_leaves_nothing_behind(api_client, s3):
    """A healthy store: storage ok, and the health object is deleted again."""
    body = api_client.get("/readyz").json()
    assert body["checks"]["storage"] == {"ok": True}
    assert storage.storage_list(prefix=storage.HEALTH_KEY_PREFIX) == []


def test_readyz_reports_storage_down_when_the_store_refuses_writes(api_client, full_store, caplog):
    """A full store still answers reads (the old bucket check passed), but /readyz says storage
    is down; the refusal is logged and counted with its reason."""
    storage.storage_ping()  # reads and the bucket are fine: what /readyz used to check
    before = scrape(api_client)
    with caplog.at_level(logging.WARNING, logger="storage.s3"):
        response = api_client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert "storage" in body["down"]
    assert "cannot write to the store (server_error)" in body["checks"]["storage"]["error"]
    assert any("storage put failed (server_error)" in record.getMessage() for record in caplog.records)
    assert delta(before, scrape(api_client), "fda_storage_errors_total", operation="put", reason="server_error") == 1


def test_an_upload_to_a_full_store_is_a_503_with_retry_after(api_client, full_store):
    """The client is told to come back later, and no job is left behind."""
    from jobs.models import Image

    response = upload(api_client, photo_bytes("coffee.png"), request_id="into-a-full-store")
    assert response.status_code == 503, response.content
    assert response.json()["error"]["code"] == "storage_unavailable"
    assert int(response["Retry-After"]) > 0
    assert not Image.objects.filter(request_id="into-a-full-store").exists()


def test_the_write_check_is_cached_for_a_few_seconds(api_client, s3, settings):
    """Within READYZ_STORAGE_CACHE_SECONDS a probe reuses the last answer (no write per probe);
    once forgotten, the store is asked again."""
    require("rabbitmq")
    settings.READYZ_STORAGE_CACHE_SECONDS = 3600
    assert api_client.get("/readyz").json()["checks"]["storage"]["ok"] is True
    settings.S3_ENDPOINT = "127.0.0.1:9"  # nothing listens there
    storage.reset_clients()
    try:
        assert api_client.get("/readyz").json()["checks"]["storage"]["ok"] is True  # the cached answer
        storage_check_forget()
        body = api_client.get("/readyz").json()
    finally:
        settings.S3_ENDPOINT = s3.endpoint
        storage.reset_clients()
    assert body["checks"]["storage"]["ok"] is False
    assert "(unreachable)" in body["checks"]["storage"]["error"]


def test_refusals_are_told_apart_by_reason(s3, settings):
    """Real refusals of a real server: a wrong secret is "denied", a missing bucket "no_bucket",
    nothing listening "unreachable"."""
    settings.S3_SECRET_KEY = "not-the-secret"
    storage.reset_clients()
    try:
        with pytest.raises(storage.StorageError) as denied:
            storage.storage_check_write()
    finally:
        settings.S3_SECRET_KEY = s3.secret_key
        storage.reset_clients()
    assert denied.value.reason == "denied"

    settings.S3_BUCKET = "no-such-bucket-here"
    with pytest.raises(storage.StorageError) as missing:
        storage.storage_check_write()
    assert missing.value.reason == "no_bucket"

    settings.S3_ENDPOINT = "127.0.0.1:9"
    storage.reset_clients()
    try:
        with pytest.raises(storage.StorageError) as unreachable:
            storage.storage_check_write()
    finally:
        settings.S3_ENDPOINT = s3.endpoint
        storage.reset_clients()
    assert unreachable.value.reason == "unreachable"


def test_core_metrics_knows_every_reason_storage_gives():
    """core cannot import storage, so the reasons are written twice: they must agree."""
    from core import metrics

    assert set(metrics._STORAGE_REASONS) == set(storage.STORAGE_ERROR_REASONS)
