"""The dashboard in a real browser: real jobs through a real worker (MTCNN, two versions, a live
rollout), the page served by a live server, opened by headless Chromium as a signed-in staff
user, its DOM read and a screenshot taken.

Chromium is driven over the DevTools protocol on a pipe (--remote-debugging-pipe: JSON messages
ended by NUL on file descriptors 3 and 4), so nothing beyond the standard library is needed and
the staff session cookie is set with Network.setCookie, as the admin's login would leave it.
The screenshot is saved under the test's tmp dir and, when FDA_SCREENSHOT_DIR is set, there too.
"""

import base64
import io
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client
from PIL import Image as PILImage

from dashboard.charts import PALETTE
from jobs.models import Image, ShadowRun
from rollouts.services import cohort_key, rollout_start, variant_for
from tests.conftest import IN_CI, photo_bytes, upload, wait_terminal

pytestmark = [pytest.mark.django_db(transaction=True)]

BASELINE, CANDIDATE = "mtcnn@1.0.0", "mtcnn@1.1.0"
# Each round takes four of them in turn, so faces per photo moves from round to round.
PHOTOS = (
    "obama_1face.jpg",
    "astronaut_1face.png",
    "coffee.png",
    "grace_hopper_1face.jpg",
    "chelsea_cat.png",
    "cameraman_profile_1face.png",
    "gravel_texture.png",
)
WIDTH, HEIGHT = 1400, 1800


def chromium_binary() -> str:
    """Chromium's path; without one the test is skipped, and in CI (CI=true) it fails."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        message = "needs chromium (apt-get install -y chromium; .ci/run installs it)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return found


class Browser:
    """Headless Chromium driven over --remote-debugging-pipe."""

    def __init__(self, binary: str, profile: Path) -> None:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            # No connections of Chromium's own (updates, sync, safe browsing): the machine has no
            # network beyond loopback, and the test reaches only the live server.
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            "--remote-debugging-pipe",
            f"--user-data-dir={profile}",
            f"--window-size={WIDTH},{HEIGHT}",
            "about:blank",
        ]
        # The protocol's pipe is fds 3 (commands in) and 4 (answers out) of the browser.
        shell = f'exec "$0" "$@" 3<&{to_browser_r} 4>&{from_browser_w} {to_browser_r}<&- {from_browser_w}>&-'
        self.process = subprocess.Popen(
            ["bash", "-c", shell, binary, *args],
            pass_fds=(to_browser_r, from_browser_w),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._next_id = 0
        self._messages: queue.Queue[dict | None] = queue.Queue()
        self._pending: list[dict] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buffer = b""
        while chunk := os.read(self._from_browser, 65536):
            buffer += chunk
            while b"\0" in buffer:
                message, buffer = buffer.split(b"\0", 1)
                self._messages.put(json.loads(message))
        self._messages.put(None)  # the browser closed the pipe

    def _next(self, deadline: float) -> dict:
        try:
            message = self._messages.get(timeout=max(deadline - time.monotonic(), 0.01))
        except queue.Empty:
            pytest.fail("Chromium did not answer in time")
        if message is None:
            pytest.fail(f"Chromium closed the protocol pipe (exit {self.process.poll()})")
        return message

    def send(self, method: str, session: str | None = None, timeout: float = 60, **params) -> dict:
        """Send one command and return its result (events that come first are kept)."""
        self._next_id += 1
        command = {"id": self._next_id, "method": method, "params": params, **({"sessionId": session} if session else {})}
        os.write(self._to_browser, json.dumps(command).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            message = self._next(deadline)
            if message.get("id") == self._next_id:
                if "error" in message:
                    pytest.fail(f"{method}: {message['error']}")
                return message["result"]
            self._pending.append(message)

    def wait_event(self, method: str, session: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        for index, message in enumerate(self._pending):
            if message.get("method") == method and message.get("sessionId") == session:
                return self._pending.pop(index)
        while True:
            message = self._next(deadline)
            if message.get("method") == method and message.get("sessionId") == session:
                return message
            self._pending.append(message)

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except BaseException:
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, 9)
            self.process.wait()
        os.close(self._to_browser)


@pytest.fixture
def browser(tmp_path):
    browser = Browser(chromium_binary(), tmp_path / "profile")
    yield browser
    browser.close()


def staff_session_cookie() -> str:
    """A staff user's session, made the way the admin's login makes one."""
    user = get_user_model().objects.create_user(username="dashboard-staff", password="not-used", is_staff=True)
    client = Client()
    client.force_login(user)
    return client.cookies[settings.SESSION_COOKIE_NAME].value


def run_real_jobs(api_client, rounds: int, gap: float) -> list[str]:
    """Photos through the real worker, in rounds: each version asked for by name (model_version),
    and more routed by a live A/B rollout (four cohorts on each side; the candidate's jobs also
    run on the baseline, for agreement). Returns the job ids once they and their shadow runs are
    done."""
    rollout = rollout_start(
        candidate=CANDIDATE,
        mode="ab",
        actor="operator:dashboard-test",
        guardrails={"p95_latency_ratio_max": 1.5, "error_rate_max": 0.05, "agreement_min": 0.8, "min_jobs": 3},
        shadow_sample=1.0,
    )
    cohorts = {"baseline": [], "candidate": []}
    for n in range(200):
        side = variant_for(rollout, cohort_key(client_id=0, cohort=f"camera-{n}"))
        if len(cohorts[side]) < 4:
            cohorts[side].append(f"camera-{n}")
    assert all(len(names) == 4 for names in cohorts.values())
    ids = []
    for round_ in range(rounds):
        if round_ and gap:
            time.sleep(gap)  # spread over the window (FDA_DASHBOARD_GAP), for a screenshot worth looking at
        for n in range(4):
            name = PHOTOS[(4 * round_ + n) % len(PHOTOS)]
            # Fewer asked for the candidate by name than the baseline: the two lines part.
            for version in (BASELINE, CANDIDATE) if n < 2 else (BASELINE,):
                ids.append(_submit(api_client, name, f"dash-{round_}-{version}-{name}", {"model_version": version}))
            for side in ("baseline", "candidate"):
                ids.append(_submit(api_client, name, f"dash-{round_}-{side}-{name}", {"cohort": cohorts[side][n]}))
        for image_id in ids:
            wait_terminal(image_id)
    # The rollout's shadow runs too, so the agreement shown is the whole run's.
    deadline = time.monotonic() + 180
    while ShadowRun.objects.filter(job_id__in=ids, status="queued").exists():
        if time.monotonic() > deadline:
            pytest.fail("shadow runs not finished within 180 s")
        time.sleep(0.2)
    return ids


def _submit(api_client, name: str, request_id: str, fields: dict) -> str:
    response = upload(api_client, photo_bytes(name), name=name, request_id=request_id, **fields)
    assert response.status_code == 202, response.content
    return response.json()["id"]


def pixel(png: bytes, x: float, y: float) -> tuple[int, int, int]:
    return PILImage.open(io.BytesIO(png)).convert("RGB").getpixel((round(x), round(y)))


def near(rgb: tuple[int, int, int], hex_colour: str, tolerance: int = 24) -> bool:
    return all(abs(a - int(hex_colour[i : i + 2], 16)) <= tolerance for a, i in zip(rgb, (1, 3, 5)))


def test_the_dashboard_shows_real_jobs_of_both_versions_in_chromium(api_client, worker, s3, live_server, browser, tmp_path, settings):
    """Chromium, signed in as staff, sees each version's series with points in every chart, the
    rollout's guardrails and events; a screenshot is saved."""
    # Many uploads in a row from one key (more with FDA_DASHBOARD_ROUNDS): not a rate-limit test.
    settings.API_RATE_LIMIT = settings.API_UPLOAD_RATE_LIMIT = ""
    rounds = int(os.environ.get("FDA_DASHBOARD_ROUNDS", "2"))
    ids = run_real_jobs(api_client, rounds, float(os.environ.get("FDA_DASHBOARD_GAP", "0")))
    jobs = Image.objects.filter(id__in=ids)
    assert {job.status for job in jobs} == {"completed"}
    # The CPU time was measured around the real detector, on every job.
    assert all(job.detection_cpu_ms is not None and job.detection_cpu_ms > 0 for job in jobs)

    target = browser.send("Target.createTarget", url="about:blank")["targetId"]
    session = browser.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
    browser.send("Network.enable", session)
    browser.send(
        "Network.setCookie", session, name=settings.SESSION_COOKIE_NAME, value=staff_session_cookie(), url=live_server.url, httpOnly=True
    )
    browser.send("Page.enable", session)
    browser.send("Emulation.setDeviceMetricsOverride", session, width=WIDTH, height=HEIGHT, deviceScaleFactor=1, mobile=False)
    browser.send("Page.navigate", session, url=f"{live_server.url}/dashboard/?window={os.environ.get('FDA_DASHBOARD_WINDOW', '900')}")
    browser.wait_event("Page.loadEventFired", session)

    page = browser.send(
        "Runtime.evaluate",
        session,
        returnByValue=True,
        expression="""JSON.stringify({
        path: location.pathname,
        title: document.title,
        series: Array.from(document.querySelectorAll('svg.chart g.series'))
            .map(g => [g.dataset.series, g.querySelectorAll('circle, polyline').length]),
        charts: Array.from(document.querySelectorAll('svg.chart')).map(s => Math.round(s.getBoundingClientRect().width)),
        thresholds: Array.from(document.querySelectorAll('svg.chart g.threshold')).map(g => g.textContent),
        events: Array.from(document.querySelectorAll('.events .action')).map(e => e.textContent),
        rows: Array.from(document.querySelectorAll('table.versions tbody tr')).map(r => r.dataset.version),
        // Where each version's filled dots are on the page, and the colour they are drawn in.
        dots: Array.from(document.querySelectorAll('svg.chart g.series circle'))
            .filter(c => c.getAttribute('fill') !== '#FFFFFF').map(c => {
            const r = c.getBoundingClientRect();
            return [c.parentNode.dataset.series, c.getAttribute('fill'), r.x + r.width / 2, r.y + r.height / 2];
        }),
    })""",
    )["result"]["value"]
    page = json.loads(page)
    assert page["path"] == "/dashboard/", page  # signed in: not sent to the login page
    assert page["rows"] == [BASELINE, CANDIDATE]
    assert len(page["charts"]) == 5 and min(page["charts"]) > 300
    drawn = {}
    for key, points in page["series"]:
        drawn.setdefault(key, []).append(points)
    # Every chart has a series per version (the detection-time chart two: p95 and p50), drawn.
    assert sorted(drawn) == [BASELINE, CANDIDATE]
    assert all(len(counts) == 6 and all(n > 0 for n in counts) for counts in drawn.values()), drawn
    assert any("1.5 × baseline" in t for t in page["thresholds"]) and any("error rate ≤ 5 %" in t for t in page["thresholds"])
    assert page["events"][-1] == "start"

    # The whole page down to its footer (the viewport may be taller than the content).
    height = browser.send(
        "Runtime.evaluate",
        session,
        returnByValue=True,
        expression="Math.ceil(document.querySelector('footer').getBoundingClientRect().bottom)",
    )["result"]["value"]
    shot = base64.b64decode(
        browser.send(
            "Page.captureScreenshot",
            session,
            format="png",
            captureBeyondViewport=True,
            clip={"x": 0, "y": 0, "width": WIDTH, "height": int(height), "scale": 1},
        )["data"]
    )
    (tmp_path / "dashboard.png").write_bytes(shot)
    if os.environ.get("FDA_SCREENSHOT_DIR"):
        out = Path(os.environ["FDA_SCREENSHOT_DIR"])
        out.mkdir(parents=True, exist_ok=True)
        (out / "dashboard.png").write_bytes(shot)
    assert PILImage.open(io.BytesIO(shot)).size == (WIDTH, int(height))
    # Painted, not only in the markup: some dot of each version shows its colour where the DOM puts it.
    painted = {key for key, colour, x, y in page["dots"] if near(pixel(shot, x, y), colour)}
    assert painted == {BASELINE, CANDIDATE}, page["dots"][:10]
    assert {colour for key, colour, _, _ in page["dots"]} == {PALETTE[0], PALETTE[1]}
