"""Figures per detector version (jobs.stats.version_stats), their JSON for operators
(GET /api/v1/models/{id}/stats/) and the staff dashboard (/dashboard/), on real PostgreSQL: the
figures match the rows they are read from, only operators and staff get them, and the
dashboard's queries read the job table through an index, never a scan of it."""

import datetime as dt
import hashlib
import itertools
import math
import random
import re
import time

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from jobs import services, stats
from jobs.models import Image
from rollouts.services import rollout_start
from tests.conftest import photo_bytes, require, upload

pytestmark = [pytest.mark.django_db]

BASELINE, CANDIDATE = "mtcnn@1.0.0", "mtcnn@1.1.0"
_serial = itertools.count()


@pytest.fixture(autouse=True)
def _postgres():
    # The figures are read with PostgreSQL's PERCENTILE_DISC, and EXPLAIN is PostgreSQL's.
    require("postgres")


def job_row(
    owner,
    version: str,
    finished: dt.datetime | None,
    *,
    status: str = "completed",
    ms: int | None = 100,
    cold: bool = False,
    cpu: int | None = 200,
    faces: int | None = 1,
    rollout=None,
    variant: str = "",
) -> Image:
    """An unsaved job row as a worker leaves it (failed: no faces, no times)."""
    n = next(_serial)
    failed = status == "failed"
    return Image(
        client=owner,
        request_id=f"stats-{n}",
        original_key=f"originals/stats/{n}.png",
        original_content_type="image/png",
        original_size=1,
        original_sha256=hashlib.sha256(str(n).encode()).hexdigest(),
        detector_version_id=version,
        model_version=version,
        status=status,
        error_code="internal_error" if failed else "",
        face_count=None if failed or status != "completed" else faces,
        detection_ms=None if failed else ms,
        detection_cpu_ms=None if failed else cpu,
        detector_cold=cold,
        rollout=rollout,
        variant=variant,
        finished_at=finished,
    )


@pytest.fixture
def owner():
    from clients.models import ApiClient

    return ApiClient.objects.create(name=f"stats-{time.monotonic_ns()}")


def nearest_rank(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return float(ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1])


def expected_figures(rows: list[Image], seconds: float) -> dict:
    """The figures of ``rows`` (finished jobs of one span), worked out here from the rows."""
    completed = [r for r in rows if r.status == "completed"]
    warm = [r for r in completed if not r.detector_cold]
    latencies = [r.detection_ms for r in warm if r.detection_ms is not None]
    cpu = [r.detection_cpu_ms for r in warm if r.detection_cpu_ms is not None]
    faces = [r.face_count for r in completed if r.face_count is not None]
    failed = sum(r.status == "failed" for r in rows)
    return {
        "jobs": len(rows),
        "failed": failed,
        "jobs_per_minute": round(len(rows) / (seconds / 60), 3),
        "error_rate": round(failed / len(rows), 4) if rows else None,
        "p50_detection_ms": nearest_rank(latencies, 50),
        "p95_detection_ms": nearest_rank(latencies, 95),
        "latency_samples": len(latencies),
        "faces_per_photo": round(sum(faces) / len(faces), 3) if faces else None,
        "cpu_samples": len(cpu),
        # CPU-seconds per 1,000 detections, from the sum: (sum ms / 1000) per detection, times 1,000.
        "cpu_seconds_per_1000": round(sum(cpu) / 1000 / len(cpu) * 1000, 3) if cpu else None,
    }


def varied_rows(owner, now: dt.datetime, *, window: int, buckets: int, seed: int = 7) -> list[Image]:
    """Jobs of both versions all over the window (slow, cold, failed, without a CPU time), and
    some the window must leave out: older, newer than ``now``, unfinished."""
    rng = random.Random(seed)
    width = window / buckets
    rows = []
    for version in (BASELINE, CANDIDATE):
        for _ in range(260):
            bucket = rng.randrange(buckets)
            # Well inside a bucket, so that no row sits on an edge.
            offset = (bucket + 0.1 + 0.8 * rng.random()) * width
            status = "failed" if rng.random() < 0.12 else "completed"
            rows.append(
                job_row(
                    owner,
                    version,
                    now - dt.timedelta(seconds=window) + dt.timedelta(seconds=offset),
                    status=status,
                    ms=rng.randint(40, 900),
                    cold=rng.random() < 0.08,
                    cpu=None if rng.random() < 0.1 else rng.randint(50, 4000),
                    faces=rng.randint(0, 5),
                )
            )
    rows += [
        job_row(owner, BASELINE, now - dt.timedelta(seconds=window + 5)),  # before the window
        job_row(owner, BASELINE, now + dt.timedelta(seconds=5)),  # after it
        job_row(owner, BASELINE, None, status="queued", ms=None, cpu=None),  # not finished
    ]
    return Image.objects.bulk_create(rows)


def in_window(rows, version, since, until):
    return [
        r
        for r in rows
        if r.detector_version_id == version
        and r.finished_at is not None
        and since < r.finished_at <= until
        and r.status in ("completed", "failed")
    ]


def assert_matches_rows(figures: dict, rows: list[Image], version: str) -> None:
    since, until = dt.datetime.fromisoformat(figures["since"]), dt.datetime.fromisoformat(figures["until"])
    window, width = figures["window_seconds"], figures["bucket_seconds"]
    mine = in_window(rows, version, since, until)
    assert figures["totals"] == expected_figures(mine, window)
    assert len(figures["buckets"]) == round(window / width)
    for index, bucket in enumerate(figures["buckets"]):
        inside = [r for r in mine if min(math.floor((r.finished_at - since).total_seconds() / width), len(figures["buckets"]) - 1) == index]
        assert {k: v for k, v in bucket.items() if k not in ("start", "end")} == expected_figures(inside, width), index
        assert dt.datetime.fromisoformat(bucket["start"]) == since + dt.timedelta(seconds=index * width)


# --- The figures ----------------------------------------------------------------------------------


def test_version_stats_match_the_rows(owner):
    """Totals and every bucket equal the figures worked out from the rows made (cold, failed and other versions' jobs too)."""
    now = timezone.now()
    rows = varied_rows(owner, now, window=3600, buckets=60)
    for version in (BASELINE, CANDIDATE):
        figures = stats.version_stats(version_id=version, window_seconds=3600, buckets=60, now=now)
        assert (figures["version"], figures["window_seconds"], figures["bucket_seconds"]) == (version, 3600, 60.0)
        assert_matches_rows(figures, rows, version)
        assert figures["totals"]["jobs"] == 260 and figures["totals"]["failed"] > 0


def test_the_python_reading_gives_what_postgresql_gives(owner, monkeypatch):
    """The row-by-row reading (SQLite's, in the embedded stack) and the SQL one agree on the same rows."""
    now = timezone.now()
    varied_rows(owner, now, window=86400, buckets=48, seed=11)
    in_sql = stats.version_stats(version_id=BASELINE, window_seconds=86400, buckets=48, now=now)
    monkeypatch.setattr(stats, "_raw_in_sql", stats._raw_in_python)
    in_python = stats.version_stats(version_id=BASELINE, window_seconds=86400, buckets=48, now=now)
    assert in_python == in_sql and in_sql["totals"]["jobs"] == 260


def test_a_window_without_jobs_has_null_figures(owner):
    """No job: zero counts, and null where there is nothing to read a figure from."""
    figures = stats.version_stats(version_id=CANDIDATE, window_seconds=60, buckets=6)
    assert figures["totals"] == expected_figures([], 60)
    assert figures["totals"]["p95_detection_ms"] is None and figures["totals"]["error_rate"] is None
    assert [b["jobs"] for b in figures["buckets"]] == [0] * 6


def test_window_and_buckets_are_bounded():
    """version_stats refuses a window under a minute or over 30 days, and 0 buckets."""
    for window, buckets in ((59, 60), (30 * 86400 + 1, 60), (3600, 0), (3600, stats.MAX_BUCKETS + 1)):
        with pytest.raises(ValueError):
            stats.version_stats(version_id=BASELINE, window_seconds=window, buckets=buckets)


def test_detection_records_its_cpu_time(api_client, s3, monkeypatch, stub_detector):
    """image_job_detect stores the process CPU time measured around detector.detect, in ms."""
    monkeypatch.setattr("jobs.services.submission.image_job_enqueue", lambda *, image_id: None)
    job_id = upload(api_client, photo_bytes("astronaut_1face.png"), request_id="cpu").json()["id"]
    from detection.stub import StubDetector

    # A CPU clock that moves only while the detector predicts: 250 ms of CPU per detection.
    cpu = [10.0]
    predict = StubDetector.predict

    def busy_predict(self, inputs):
        cpu[0] += 0.25
        return predict(self, inputs)

    monkeypatch.setattr(StubDetector, "predict", busy_predict)
    monkeypatch.setattr(services.detection.time, "process_time", lambda: cpu[0])
    services.image_job_detect(image_id=job_id)
    job = Image.objects.get(id=job_id)
    assert job.status == "completed" and job.detection_cpu_ms == 250


# --- The JSON for operators -----------------------------------------------------------------------


@pytest.fixture
def operator():
    from rest_framework.test import APIClient

    from clients.services import api_key_create

    client = APIClient()
    client.credentials(HTTP_X_API_KEY=api_key_create(client_name=f"ops-{time.monotonic_ns()}", operator=True)[1])
    return client


def test_the_stats_json_is_the_rows_figures(operator, owner):
    """GET /models/{id}/stats/ answers the window's figures, totals and buckets, as the rows give them."""
    now = timezone.now()
    rows = varied_rows(owner, now, window=3600, buckets=60, seed=3)
    response = operator.get(f"/api/v1/models/{CANDIDATE}/stats/", {"window": 3600})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["version"] == CANDIDATE and len(body["buckets"]) == 60
    assert_matches_rows(body, rows, CANDIDATE)
    assert body["totals"]["jobs"] == 260
    few = operator.get(f"/api/v1/models/{CANDIDATE}/stats/", {"window": 600, "buckets": 5}).json()
    assert (few["window_seconds"], few["bucket_seconds"], len(few["buckets"])) == (600, 120.0, 5)
    assert_matches_rows(few, rows, CANDIDATE)


def test_stats_are_for_operators_only(api_client, anonymous_client):
    """A client's key gets 403 forbidden, no key 401."""
    response = api_client.get(f"/api/v1/models/{BASELINE}/stats/")
    assert response.status_code == 403 and response.json()["error"]["code"] == "forbidden"
    assert anonymous_client.get(f"/api/v1/models/{BASELINE}/stats/").status_code == 401


@pytest.mark.parametrize("window", ["59", str(30 * 86400 + 1), "an hour", "-3600", "3600.5"])
def test_a_bad_window_is_a_400_naming_it(operator, window):
    """Outside 60 s .. 30 days, or not whole seconds: 400 with field window."""
    response = operator.get(f"/api/v1/models/{BASELINE}/stats/", {"window": window})
    assert response.status_code == 400 and response.json()["error"]["field"] == "window"


def test_bad_buckets_and_unknown_versions_are_refused(operator):
    """buckets outside 1..MAX_BUCKETS is a 400 naming it; an unknown version a 404."""
    response = operator.get(f"/api/v1/models/{BASELINE}/stats/", {"buckets": 0})
    assert response.status_code == 400 and response.json()["error"]["field"] == "buckets"
    assert operator.get("/api/v1/models/nope@0.0.0/stats/").status_code == 404


# --- The dashboard ------------------------------------------------------------------------------


def user(**flags):
    return get_user_model().objects.create_user(username=f"u{time.monotonic_ns()}", password="pw-not-used", **flags)


@pytest.fixture
def staff(client):
    client.force_login(user(is_staff=True))
    return client


def series_keys(html: str) -> set[str]:
    return set(re.findall(r'<g class="series" data-series="([^"]+)">', html))


def test_the_dashboard_draws_each_version_for_staff(staff, owner):
    """Staff get the page: a summary row, and a series with its points per version in every chart."""
    now = timezone.now()
    Image.objects.bulk_create(
        [job_row(owner, BASELINE, now - dt.timedelta(minutes=m), ms=120, cpu=300, faces=2) for m in (1, 2, 3)]
        + [job_row(owner, CANDIDATE, now - dt.timedelta(minutes=m), ms=200, cpu=500) for m in (1, 4)]
    )
    response = staff.get("/dashboard/")
    assert response.status_code == 200
    html = response.content.decode()
    assert series_keys(html) == {BASELINE, CANDIDATE}
    assert html.count("<svg") == 5 and html.count(f'data-series="{BASELINE}"') == 6  # p95 and p50 in one chart
    row = re.search(rf'<tr data-version="{re.escape(BASELINE)}">(.*?)</tr>', html, re.S).group(1)
    cells = [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r'<td class="num">(.*?)</td>', row, re.S)]
    assert cells == ["3", "0.05", "120 ms", "120 ms", "0.0 %", "2.00", "300.0"]
    assert response["Cache-Control"].startswith("max-age=0")


def test_the_dashboard_window_links_and_a_bad_window(staff):
    """Hour, day and week links; a window outside a minute .. 30 days is a 400 naming window."""
    html = staff.get("/dashboard/", {"window": 86400}).content.decode()
    assert all(f'href="?window={s}"' in html for s in (3600, 86400, 604800))
    assert 'class="current" aria-current="page">Last day' in html
    for bad in ("10", "x", str(31 * 86400)):
        response = staff.get("/dashboard/", {"window": bad})
        assert response.status_code == 400 and 'data-field="window"' in response.content.decode()


def test_anonymous_visitors_are_sent_to_the_admin_login(client):
    """No session: a redirect to the admin login, coming back to the dashboard after."""
    response = client.get("/dashboard/")
    assert response.status_code == 302 and response["Location"] == "/admin/login/?next=/dashboard/"


def test_users_who_are_not_staff_are_refused(client):
    """A signed-in user without is_staff gets 403, and no figures."""
    client.force_login(user())
    response = client.get("/dashboard/")
    assert response.status_code == 403 and b"<svg" not in response.content


def test_the_admin_index_links_to_the_dashboard(staff):
    """The admin's index page has a link to /dashboard/."""
    assert 'href="/dashboard/"' in staff.get("/admin/").content.decode()


def test_a_live_rollout_shows_its_guardrails_and_events(staff, owner):
    """Baseline against candidate on the guardrail window, the thresholds drawn as lines, the event log."""
    rollout = rollout_start(
        candidate=CANDIDATE,
        mode="canary",
        actor="operator:ops",
        guardrails={"p95_latency_ratio_max": 1.5, "error_rate_max": 0.05, "min_jobs": 2},
    )
    now = timezone.now()
    Image.objects.bulk_create(
        [job_row(owner, BASELINE, now - dt.timedelta(seconds=s), ms=100, rollout=rollout, variant="baseline") for s in (10, 20, 30)]
        + [job_row(owner, CANDIDATE, now - dt.timedelta(seconds=s), ms=400, rollout=rollout, variant="candidate") for s in (15, 25)]
    )
    html = staff.get("/dashboard/").content.decode()
    assert "Live rollout" in html and "operator:ops" in html and '<span class="action">start</span>' in html
    # p95 ratio: 1.5 x the baseline's 100 ms; error rate: 5 % (charts in percent).
    assert 'data-threshold="150"' in html and 'data-threshold="5"' in html
    assert "p95_latency_ratio_max: candidate p95 400 ms is 4.00x the baseline&#x27;s 100 ms, above 1.5" in html
    assert f"{BASELINE} (baseline)" in html and f"{CANDIDATE} (candidate)" in html


# --- Indexed reads --------------------------------------------------------------------------------


def test_the_dashboard_reads_jobs_through_indexes(staff, owner):
    """With 100,000 job rows (60 days, two versions, a live rollout), EXPLAIN of every query
    the dashboard and the stats JSON make on api_image uses an index: no Seq Scan."""
    rollout = rollout_start(candidate=CANDIDATE, mode="canary", actor="test", guardrails={"p95_latency_ratio_max": 1.5})
    now = timezone.now()
    rng = random.Random(1)
    rows = []
    for n in range(100_000):
        version = BASELINE if n % 2 else CANDIDATE
        routed = n % 10 == 0  # a share of them routed by the rollout
        rows.append(
            job_row(
                owner,
                version,
                now - dt.timedelta(seconds=rng.uniform(0, 60 * 86400)),
                status="failed" if n % 50 == 0 else "completed",
                ms=rng.randint(50, 500),
                rollout=rollout if routed else None,
                variant=("baseline" if version == BASELINE else "candidate") if routed else "",
            )
        )
    with connection.cursor() as cursor:
        # Foreign keys checked row by row as they go in, not all at once when the test ends.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        Image.objects.bulk_create(rows, batch_size=5000)
        cursor.execute("ANALYZE api_image")

    with CaptureQueriesContext(connection) as captured:
        for window in (3600, 86400, 7 * 86400):
            assert staff.get("/dashboard/", {"window": window}).status_code == 200
        assert stats.version_stats(version_id=BASELINE, window_seconds=30 * 86400, buckets=60)["totals"]["jobs"] > 20_000
    reads = [q["sql"] for q in captured.captured_queries if q["sql"].startswith("SELECT") and '"api_image"' in q["sql"]]
    assert len(reads) >= 3 * 5  # per window: each version's two reads, and the rollout's
    plans = {}
    with connection.cursor() as cursor:
        for sql in reads:
            cursor.execute("EXPLAIN " + sql)
            plans[sql] = "\n".join(row[0] for row in cursor.fetchall())
    scans = {sql: plan for sql, plan in plans.items() if "Seq Scan on api_image" in plan}
    assert scans == {}, next(iter(scans.items()), None)
    assert all(re.search(r"Index (Only )?Scan|Bitmap Index Scan", plan) for plan in plans.values())
    assert any("image_version_finished_idx" in plan for plan in plans.values())
