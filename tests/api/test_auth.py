"""API keys, per-client isolation, rate limits, the size guard, and the production guard."""

import subprocess
import sys

import pytest
from django.core.management import call_command

from clients.models import ApiKey
from clients.services import api_key_create, api_key_revoke
from jobs.models import Image
from tests.conftest import ROOT, photo_bytes, require, upload

pytestmark = [pytest.mark.django_db]


def test_create_api_key_prints_the_key_alone_on_the_last_line(capsys):
    """`manage.py create_api_key NAME`: the key is usable and only its hash is stored."""
    call_command("create_api_key", "acme")
    key = capsys.readouterr().out.strip().splitlines()[-1]
    assert key.startswith("fda_") and " " not in key
    row = ApiKey.objects.get(client__name="acme")
    assert key not in (row.key_hash, row.prefix) and row.prefix in key


@pytest.mark.parametrize("header", ["HTTP_AUTHORIZATION", "HTTP_X_API_KEY"])
def test_both_headers_are_accepted(anonymous_client, api_key, header):
    value = f"Api-Key {api_key}" if header == "HTTP_AUTHORIZATION" else api_key
    anonymous_client.credentials(**{header: value})
    assert anonymous_client.get("/api/v1/images/").status_code == 200


def test_no_key_is_401_with_a_challenge(anonymous_client):
    response = anonymous_client.get("/api/v1/images/")
    assert response.status_code == 401 and response["WWW-Authenticate"] == "Api-Key"
    assert response.json()["error"]["code"] == "not_authenticated"


def test_a_revoked_key_stops_working(anonymous_client):
    row, key = api_key_create(client_name="soon-gone")
    anonymous_client.credentials(HTTP_X_API_KEY=key)
    assert anonymous_client.get("/api/v1/images/").status_code == 200
    assert api_key_revoke(prefix=row.prefix)
    assert anonymous_client.get("/api/v1/images/").status_code == 401


def test_clients_see_only_their_own_jobs(api_client, anonymous_client, s3, monkeypatch):
    """Same request_id, two clients: two jobs, each invisible to the other."""
    monkeypatch.setattr("jobs.services.submission.image_job_enqueue", lambda *, image_id: None)
    mine = upload(api_client, photo_bytes("coffee.png"), request_id="same").json()["id"]
    anonymous_client.credentials(HTTP_X_API_KEY=api_key_create(client_name="rival")[1])
    theirs = upload(anonymous_client, photo_bytes("coffee.png"), request_id="same").json()["id"]
    assert mine != theirs and Image.objects.count() == 2
    assert api_client.get(f"/api/v1/images/{theirs}/").status_code == 404
    assert [j["id"] for j in api_client.get("/api/v1/images/", {"request_id": "same"}).json()["results"]] == [mine]


def test_probes_and_schema_need_no_key(anonymous_client):
    assert anonymous_client.get("/healthz").status_code == 200
    assert anonymous_client.get("/api/schema/").status_code == 200
    docs = anonymous_client.get("/api/docs/")
    assert docs.status_code == 200 and b"drf_spectacular_sidecar" in docs.content  # served here, no CDN


def test_the_admin_needs_a_staff_login(anonymous_client):
    response = anonymous_client.get("/admin/jobs/image/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_over_the_rate_limit_is_429_with_retry_after(api_client, settings):
    require("redis")
    settings.API_RATE_LIMIT = "3/minute"
    codes = [api_client.get("/api/v1/images/").status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    response = api_client.get("/api/v1/images/")
    assert int(response["Retry-After"]) > 0 and response.json()["error"]["code"] == "throttled"


def test_an_upload_larger_than_the_limit_is_stopped_while_streaming(api_client, s3, settings):
    """Content-Length within reach of the limit: the upload handler stops the file at the limit."""
    data = photo_bytes("coffee.png")  # about 467 kB
    settings.MAX_UPLOAD_BYTES = len(data) - 50_000
    response = upload(api_client, data, request_id="stream")
    assert response.status_code == 413 and response.json()["error"]["field"] == "image"
    assert Image.objects.count() == 0


def _settings_in_a_fresh_process(**env):
    code = "import django; django.setup(); print('started')"
    base = {"PATH": "/usr/bin:/bin", "DJANGO_SETTINGS_MODULE": "face_detect_api.settings"}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env={**base, **env})


def test_production_refuses_the_development_defaults():
    result = _settings_in_a_fresh_process(DJANGO_ENV="production", DJANGO_DEBUG="True", DJANGO_ALLOWED_HOSTS="*")
    assert result.returncode != 0
    for problem in ("DJANGO_DEBUG", "DJANGO_SECRET_KEY", "DJANGO_ALLOWED_HOSTS", "CALLBACK_SIGNING_SECRET"):
        assert problem in result.stderr


def test_production_starts_with_real_values():
    result = _settings_in_a_fresh_process(
        DJANGO_ENV="production",
        DJANGO_SECRET_KEY="k" * 64,
        DJANGO_ALLOWED_HOSTS="api.example.com",
        CALLBACK_SIGNING_SECRET="whsec_cHJvZHVjdGlvbi1zZWNyZXQtZm9yLXRoZS10ZXN0",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "started"
