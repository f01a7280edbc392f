"""Settings for the test run: the project's settings, isolated from a running dev stack.

Each run gets its own queues, bucket and S3 server port, so tests never steal a developer's jobs
and two runs never mix. The values go into os.environ so that the Celery worker the end-to-end
tests start as a subprocess (with these same settings) sees the same ones.
"""

import os
import socket
import uuid

from devstack.seaweed import free_port_block


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


if "FDA_TEST_RUN" not in os.environ:
    run = uuid.uuid4().hex[:8]
    s3_base = free_port_block(4)
    os.environ.update(
        FDA_TEST_RUN=run,
        # The tests start their own S3 server here (tests/conftest.py).
        S3_ENDPOINT=f"127.0.0.1:{s3_base + 3}",
        FDA_TEST_S3_BASE_PORT=str(s3_base),
        S3_ACCESS_KEY="test-access-key",
        S3_SECRET_KEY="test-secret-key-" + run,
        S3_BUCKET=f"fda-test-{run}",
        S3_PUBLIC_ENDPOINT="",
        CELERY_QUEUE_DETECT=f"fda-test-{run}-detect",
        CELERY_QUEUE_DELIVER=f"fda-test-{run}-deliver",
        PUBLIC_BASE_URL="http://testserver",
        # Retries in tenths of a second, not minutes.
        CALLBACK_RETRY_DELAYS="0.3,0.3,0.3",
        CALLBACK_READ_TIMEOUT="5",
        JOB_RETRY_BACKOFF_BASE="0.25",
        JOB_RETRY_BACKOFF_MAX="1",
        JOB_MAX_RETRIES="40",
        # The tests' receivers listen on loopback, which callbacks may not reach by default.
        CALLBACK_ALLOWED_NETWORKS="127.0.0.0/8",
    )
    # Outside CI a developer may lack PostgreSQL: the unit tests then run on SQLite, and the
    # tests that need the real services skip (in CI they fail instead: see conftest.py).
    if os.environ.get("CI", "").lower() != "true" and not _answers("127.0.0.1", 5432):
        os.environ["DATABASE_URL"] = "sqlite:////tmp/fda-test-{}.sqlite3".format(run)

from face_detect_api.settings import *  # noqa: E402,F401,F403

STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# A test database of this run's own: two runs at once (a developer's and CI's) never share one.
if DATABASES["default"]["ENGINE"].endswith("postgresql"):
    DATABASES["default"].setdefault("TEST", {})["NAME"] = "test_fda_" + os.environ["FDA_TEST_RUN"]
# Rate-limit counters of this run only.
CACHES["default"]["KEY_PREFIX"] = "fda-test-" + os.environ["FDA_TEST_RUN"]
