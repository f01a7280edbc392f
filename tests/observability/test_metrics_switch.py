"""METRICS_ENABLED: read by core/metrics.py from the environment when first imported, so each case
runs in a fresh interpreter of its own (no Django needed: core/metrics.py imports nothing of the
project's)."""

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

# Records one of everything, then reports what a scrape of this process shows and which files
# the shared directory holds.
SCRIPT = """
import json, os, time
from types import SimpleNamespace as Row
from datetime import datetime, timezone
from prometheus_client import generate_latest
from core import metrics

now = datetime.now(timezone.utc)
job = Row(attempts=1, started_at=now, created_at=now, detector_version_id="v@1", variant="", status="completed", error_code="")
metrics.job_started(job)
metrics.job_finished(job)
with metrics.detection_timed(model_version="v@1", variant=""):
    time.sleep(0.01)
metrics.callback_attempted(outcome="delivered", job=job, delivered_at=now)
metrics.upload_refused(reason="throttled")
metrics.detector_versions_loaded(1)
text = generate_latest(metrics.scrape_registry()).decode()
series = sorted({line.split("{")[0].split(" ")[0] for line in text.splitlines() if line.startswith("fda_")})
print(json.dumps({"series": series, "files": sorted(os.listdir(DIR)), "env_dir": metrics.multiprocess_dir()}))
"""


def run_recording(tmp_path, enabled: str) -> dict:
    directory = tmp_path / "metrics"
    directory.mkdir()  # as `make up` makes it, whatever the switch says
    env = {"PATH": "/usr/bin:/bin", "PROMETHEUS_MULTIPROC_DIR": str(directory), "METRICS_ENABLED": enabled}
    code = f"DIR = {str(directory)!r}\n" + SCRIPT
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("enabled", ["false", "0", "off", "no"])
def test_metrics_disabled_records_nothing_and_writes_no_file(tmp_path, enabled):
    """METRICS_ENABLED=false (or 0, off, no): every recording is a no-op, no file, no fda_ sample."""
    found = run_recording(tmp_path, enabled)
    assert found == {"series": [], "files": [], "env_dir": None}


def test_metrics_enabled_records_into_the_shared_directory(tmp_path):
    """METRICS_ENABLED=true: the same recordings write files and show up in the scrape."""
    found = run_recording(tmp_path, "true")
    assert found["env_dir"] == str(tmp_path / "metrics") and found["files"]
    assert {
        "fda_jobs_finished_total",
        "fda_queue_wait_seconds_count",
        "fda_detection_seconds_count",
        "fda_detection_cpu_seconds_total",
        "fda_callback_attempts_total",
        "fda_job_seconds_count",
        "fda_uploads_refused_total",
        "fda_detector_versions_loaded",
    } <= set(found["series"])
