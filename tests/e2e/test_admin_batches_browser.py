"""The admin's batch list in a real browser: a batch whose items ended every way, the page served
by a live server, opened by headless Chromium (tests/e2e/test_dashboard_browser.py's driver) as
a signed-in superuser, its table read from the DOM and a screenshot saved (under the test's tmp
dir and, when FDA_SCREENSHOT_DIR is set, there too)."""

import base64
import io
import json
import os
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client
from PIL import Image as PILImage

from clients.services import api_key_create
from jobs.models import Image
from jobs.services import batches
from tests.e2e.test_dashboard_browser import browser  # noqa: F401 - the fixture

pytestmark = [pytest.mark.django_db(transaction=True)]

WIDTH, HEIGHT = 1600, 700


def superuser_session_cookie() -> str:
    user = get_user_model().objects.create_superuser(username="batch-admin", password="not-used", email="a@example.com")
    client = Client()
    client.force_login(user)
    return client.cookies[settings.SESSION_COOKIE_NAME].value


def test_the_batch_list_shows_each_batchs_counts_in_chromium(live_server, browser, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setattr(batches, "batch_items_enqueue", lambda *, image_ids: None)
    client = api_key_create(client_name="moderation-team")[0].client
    items = [batches.BatchItem(request_id=f"night-{i}", image_url=f"https://photos.example.com/cam7/{i}.jpg") for i in range(7)]
    batch, _ = batches.batch_create(client=client, items=items)
    ids = list(Image.objects.filter(batch=batch).order_by("created_at", "id").values_list("id", flat=True))
    for image_id, status in zip(ids, ["completed"] * 3 + ["failed", "canceled", "expired", "queued"], strict=True):
        Image.objects.filter(id=image_id).update(status=status)

    target = browser.send("Target.createTarget", url="about:blank")["targetId"]
    session = browser.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
    browser.send("Network.enable", session)
    browser.send(
        "Network.setCookie",
        session,
        name=settings.SESSION_COOKIE_NAME,
        value=superuser_session_cookie(),
        url=live_server.url,
        httpOnly=True,
    )
    browser.send("Page.enable", session)
    browser.send("Emulation.setDeviceMetricsOverride", session, width=WIDTH, height=HEIGHT, deviceScaleFactor=1, mobile=False)
    browser.send("Page.navigate", session, url=f"{live_server.url}/admin/jobs/batch/")
    browser.wait_event("Page.loadEventFired", session)
    page = json.loads(
        browser.send(
            "Runtime.evaluate",
            session,
            returnByValue=True,
            expression="""JSON.stringify({
            path: location.pathname,
            headers: Array.from(document.querySelectorAll('#result_list thead th')).map(th => th.innerText.trim()),
            rows: Array.from(document.querySelectorAll('#result_list tbody tr'))
                .map(tr => Array.from(tr.querySelectorAll('th, td')).map(cell => cell.innerText.trim())),
        })""",
        )["result"]["value"]
    )
    shot = base64.b64decode(browser.send("Page.captureScreenshot", session, format="png")["data"])
    (tmp_path / "admin-batches.png").write_bytes(shot)
    if os.environ.get("FDA_SCREENSHOT_DIR"):
        out = Path(os.environ["FDA_SCREENSHOT_DIR"])
        out.mkdir(parents=True, exist_ok=True)
        (out / "admin-batches.png").write_bytes(shot)
    assert PILImage.open(io.BytesIO(shot)).size == (WIDTH, HEIGHT)

    assert page["path"] == "/admin/jobs/batch/", page  # not sent to the login page
    row = dict(zip(page["headers"], page["rows"][0], strict=False))
    assert len(page["rows"]) == 1, page
    assert row["ID"] == str(batch.id) and row["CLIENT"].lower().startswith("moderation-team"), row
    assert (row["STATUS"], row["ITEM COUNT"], row["COMPLETED"]) == ("running", "7", "3"), row
    assert (row["FAILED, CANCELED, EXPIRED"], row["QUEUED OR PROCESSING"]) == ("3", "1"), row
