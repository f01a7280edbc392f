"""Settings for the test run: the project's settings, isolated from a running dev stack.

Each run gets its own queues, bucket and S3 server port, so tests never steal a developer's jobs
and two runs never mix. The values go into os.environ so that the Celery worker the end-to-end
tests start as a subprocess (with these same settings) sees the same ones.
"""

import os

from devstack.net import answers, isolated_env

if "FDA_RUN" not in os.environ:
    os.environ.update(
        isolated_env("fda-test"),
        # The tests start their own S3 server on those ports (tests/conftest.py).
        S3_ACCESS_KEY="test-access-key",
        S3_SECRET_KEY="test-secret-key",
        PUBLIC_BASE_URL="http://testserver",
        # Retries in tenths of a second, not minutes.
        CALLBACK_RETRY_DELAYS="0.3,0.3,0.3",
        CALLBACK_READ_TIMEOUT="5",
        JOB_RETRY_BACKOFF_BASE="0.25",
        JOB_RETRY_BACKOFF_MAX="1",
        JOB_MAX_RETRIES="40",
        # The tests' receivers listen on loopback, which callbacks may not reach by default.
        CALLBACK_ALLOWED_NETWORKS="127.0.0.0/8",
        # The tests' photo server (tests/photoserver.py) listens on loopback too; refusals are
        # tested with other ranges.
        IMAGE_URL_ALLOWED_NETWORKS="127.0.0.0/8",
        IMAGE_URL_RETRY_BACKOFF="0.05",
        IMAGE_URL_READ_TIMEOUT="2",
        IMAGE_URL_TOTAL_TIMEOUT="5",
        # The suite's reference version, whatever the default becomes: its tests compare faces
        # with what mtcnn@1.0.0 returns (tests/registry/test_default_version.py tests the default).
        DETECTOR_MODEL="mtcnn@1.0.0",
    )
    # Outside CI a developer may lack PostgreSQL: the unit tests then run on SQLite, and the
    # tests that need the real services skip (in CI they fail instead: see conftest.py).
    if os.environ.get("CI", "").lower() != "true" and not answers("127.0.0.1:5432"):
        os.environ["DATABASE_URL"] = "sqlite:////tmp/fda-test-{}.sqlite3".format(os.environ["FDA_RUN"])

from face_detect_api.settings import *  # noqa: E402,F401,F403

STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# A test database of this run's own: two runs at once (a developer's and CI's) never share one.
if DATABASES["default"]["ENGINE"].endswith("postgresql"):
    DATABASES["default"].setdefault("TEST", {})["NAME"] = "test_fda_" + os.environ["FDA_RUN"]
# Rate-limit counters of this run only.
CACHES["default"]["KEY_PREFIX"] = "fda-test-" + os.environ["FDA_RUN"]
