"""Django settings, read from the environment in one place.

Every variable is documented, with a safe development default, in ``env.env`` at the repository
root. That file is read first; variables already set in the process environment win over it.
"""

import logging
import os
from pathlib import Path

import environ
from kombu import Exchange, Queue

from core.logging import logging_config

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
# read_env never overwrites a variable that is already set: the real environment wins.
environ.Env.read_env(str(BASE_DIR / "env.env"))

# --- Django core -------------------------------------------------------------------------------
DEBUG = env.bool("DJANGO_DEBUG", default=False)
SECRET_KEY = env("DJANGO_SECRET_KEY")
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["127.0.0.1", "localhost"])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    # HTTP in one place, the domain apps under it, the Celery entry points on top
    # (docs/architecture.md has the picture and the allowed arrows).
    "api",
    "clients",
    "registry",
    "storage",
    "rollouts",
    "jobs",
    "callbacks",
    "workers",
    # The staff dashboard (/dashboard/): reads jobs, rollouts and registry; nothing imports it.
    "dashboard",
]

MIDDLEWARE = [
    # First: every answer gets X-Request-ID (the others' redirects and errors too), and every log
    # line of the request its http_request_id; it writes the access log.
    "api.middleware.RequestIdMiddleware",
    # One read of the state cache's generation (Redis) per request: core.statecache.
    "api.middleware.StateCacheScopeMiddleware",
    # A view outside DRF that meets the database gone answers 503 with Retry-After, not 500.
    "api.middleware.DatabaseUnavailableMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "face_detect_api.urls"
WSGI_APPLICATION = "face_detect_api.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {"default": env.db("DATABASE_URL")}
DATABASES["default"]["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=60)
# A persistent connection is checked before its first use in each request or task, so that one
# broken by a database restart is replaced instead of failing the request (docs/reliability.md).
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
if DATABASES["default"]["ENGINE"].endswith("postgresql"):
    # Seconds to wait for a connection: a database host that does not answer fails the request
    # (503) or the task (retried) after this, rather than holding a gunicorn worker for minutes.
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault("connect_timeout", env.int("DATABASE_CONNECT_TIMEOUT", default=5))
# The Retry-After (seconds) of a 503 answer: the database or storage is unavailable.
UNAVAILABLE_RETRY_AFTER = env.int("UNAVAILABLE_RETRY_AFTER", default=5)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

# Uploads larger than this many bytes are spooled to a temporary file instead of memory.
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024

# --- REST framework ----------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": [
        "rest_framework.parsers.MultiPartParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.JSONParser",
    ],
    "DEFAULT_AUTHENTICATION_CLASSES": ["api.auth.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_THROTTLE_CLASSES": ["api.auth.ApiKeyRateThrottle", "api.auth.UploadRateThrottle"],
    "UNAUTHENTICATED_USER": None,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "api.errors.exception_handler",
    "DEFAULT_PAGINATION_CLASS": "api.pagination.JobPagination",
    "PAGE_SIZE": 50,
}

# Rate limits per API key ("N/second|minute|hour|day"; empty: no limit), counted in CACHE_URL.
API_RATE_LIMIT = env("API_RATE_LIMIT", default="600/minute")
API_UPLOAD_RATE_LIMIT = env("API_UPLOAD_RATE_LIMIT", default="120/minute")
CACHES = {"default": env.cache("CACHE_URL", default="redis://127.0.0.1:6379/1")}
if CACHES["default"]["BACKEND"] == "django.core.cache.backends.redis.RedisCache":
    # The same cache, without a new client object per call (core/cache.py).
    CACHES["default"]["BACKEND"] = "core.cache.SharedClientRedisCache"

SPECTACULAR_SETTINGS = {
    "TITLE": "face_detect_api",
    "DESCRIPTION": (
        "Asynchronous face detection. Upload a photo; get 202 at once; receive the faces at your "
        "callback_url (signed per Standard Webhooks) or poll the job. Every route needs an API key: "
        "`Authorization: Api-Key <key>` or `X-API-Key: <key>`. Every answer carries `X-Request-ID`: "
        "send your own (up to 128 printable ASCII characters) or keep the one made up for you, and "
        "quote it when you ask about a request."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "JobStatusEnum": ["queued", "processing", "completed", "failed", "deleted", "canceled", "expired"],
        "CallbackStatusEnum": ["none", "pending", "delivered", "failed"],
        "DeliveryStatusEnum": ["pending", "delivered", "failed"],
        "RolloutStatusEnum": "rollouts.models.RolloutStatus",
        "RolloutModeEnum": "rollouts.models.RolloutMode",
    },
}

# --- Public URLs --------------------------------------------------------------------------------
# The base of the absolute URLs in responses and callbacks (status_url, output_image_url). The
# worker has no request to build them from, so both sides use this one value.
PUBLIC_BASE_URL = env("PUBLIC_BASE_URL", default="http://127.0.0.1:8000").rstrip("/")

# --- Object storage (MinIO or any S3-compatible server) ----------------------------------------
S3_ENDPOINT = env("S3_ENDPOINT")
S3_ACCESS_KEY = env("S3_ACCESS_KEY")
S3_SECRET_KEY = env("S3_SECRET_KEY")
S3_SECURE = env.bool("S3_SECURE", default=False)
S3_REGION = env("S3_REGION", default="us-east-1")
S3_BUCKET = env("S3_BUCKET", default="face-detect-api")
# Where clients reach the storage server. When set, /annotated/ redirects to a presigned URL on
# this endpoint; when empty, the API streams the object itself.
S3_PUBLIC_ENDPOINT = env("S3_PUBLIC_ENDPOINT", default="")
S3_PRESIGN_SECONDS = env.int("S3_PRESIGN_SECONDS", default=300)
S3_CONNECT_TIMEOUT = env.float("S3_CONNECT_TIMEOUT", default=3.0)
S3_READ_TIMEOUT = env.float("S3_READ_TIMEOUT", default=30.0)
# Connections to the storage server each process keeps open for reuse: at least the threads that
# use it at once (gunicorn's WEB_THREADS).
S3_POOL_CONNECTIONS = env.int("S3_POOL_CONNECTIONS", default=16)
# /readyz writes (and deletes) a small object to prove the store takes writes; each process reuses
# the result, good or bad, for this many seconds.
READYZ_STORAGE_CACHE_SECONDS = env.float("READYZ_STORAGE_CACHE_SECONDS", default=5.0)

# --- Retention (jobs/retention.py; docs/security.md) ----------------------------------------------
# Days after which a job's photo and its annotated image are deleted from the store (0: kept for
# good, the default: switching it on must be a decision, not an upgrade's surprise). Celery beat
# runs it every RETENTION_INTERVAL seconds, RETENTION_BATCH_SIZE objects per batch.
RETENTION_DAYS_ORIGINALS = env.int("RETENTION_DAYS_ORIGINALS", default=0)
RETENTION_DAYS_ANNOTATED = env.int("RETENTION_DAYS_ANNOTATED", default=0)
RETENTION_INTERVAL = env.float("RETENTION_INTERVAL", default=3600.0)
RETENTION_BATCH_SIZE = env.int("RETENTION_BATCH_SIZE", default=500)

# --- Uploads -----------------------------------------------------------------------------------
MAX_UPLOAD_BYTES = env.int("MAX_UPLOAD_BYTES", default=10 * 1024 * 1024)
MAX_IMAGE_PIXELS = env.int("MAX_IMAGE_PIXELS", default=50_000_000)

# --- Photos by URL (image_url; jobs/fetch.py; docs/security.md) -----------------------------------
# The worker fetches the photo before detecting it, under the upload limits above. Only public
# addresses are fetched (the callbacks' rule), checked at submission and again on every connection
# and redirect; IMAGE_URL_ALLOWED_NETWORKS (CIDRs) opens chosen ranges (empty: none).
IMAGE_URL_ALLOWED_NETWORKS = env.list("IMAGE_URL_ALLOWED_NETWORKS", default=[])
IMAGE_URL_CONNECT_TIMEOUT = env.float("IMAGE_URL_CONNECT_TIMEOUT", default=5.0)
IMAGE_URL_READ_TIMEOUT = env.float("IMAGE_URL_READ_TIMEOUT", default=10.0)
# One try (redirects included) ends after this many seconds however slowly the server sends.
IMAGE_URL_TOTAL_TIMEOUT = env.float("IMAGE_URL_TOTAL_TIMEOUT", default=30.0)
IMAGE_URL_MAX_REDIRECTS = env.int("IMAGE_URL_MAX_REDIRECTS", default=3)
# Tries in all for transient failures (connect errors, timeouts, 5xx, 429), waiting
# IMAGE_URL_RETRY_BACKOFF seconds before the second, twice that before the third...
IMAGE_URL_FETCH_ATTEMPTS = env.int("IMAGE_URL_FETCH_ATTEMPTS", default=3)
IMAGE_URL_RETRY_BACKOFF = env.float("IMAGE_URL_RETRY_BACKOFF", default=1.0)

# --- Expiry (expires_in; jobs/services/lifecycle.py) ---------------------------------------------
# The longest expires_in a submission may ask for (seconds): a job not started by then ends
# "expired". Celery beat expires queued jobs every JOB_EXPIRE_INTERVAL seconds; the detect task
# checks again when it starts.
JOB_EXPIRES_IN_MAX = env.int("JOB_EXPIRES_IN_MAX", default=7 * 24 * 3600)
JOB_EXPIRE_INTERVAL = env.float("JOB_EXPIRE_INTERVAL", default=30.0)

# --- Detector ----------------------------------------------------------------------------------
# Activated on a fresh database only; afterwards the active version lives in the database. Empty
# (default): the fastest shipped version with the reference's faces that runs on DETECTOR_DEVICE
# (registry.services.detector_version_default: mtcnn@1.2.0 on CPUs, mtcnn@1.1.0 on CUDA).
DETECTOR_MODEL = env("DETECTOR_MODEL", default="")
# "cpu" (default), "cuda" or "cuda:N". CUDA must be asked for: a worker never picks it silently.
DETECTOR_DEVICE = env("DETECTOR_DEVICE", default="cpu")
# CPU threads one detection may use, per worker process, for every engine (torch, OpenVINO,
# LiteRT). 0 (default): the cores divided among the worker's pool processes (2 cores, 2 processes:
# 1 each), measured best here (docs/benchmarks.md). DETECTOR_TORCH_THREADS is its older name.
DETECTOR_TORCH_THREADS = env.int("DETECTOR_TORCH_THREADS", default=0)
# 0 means "not set", so an older deployment's DETECTOR_TORCH_THREADS=2 still applies beside
# env.env's DETECTOR_THREADS=0.
DETECTOR_THREADS = env.int("DETECTOR_THREADS", default=0) or DETECTOR_TORCH_THREADS
# How much lower than the rest the detection processes run (Unix niceness added to theirs, 0 to
# 19; 0: the same). Detection is throughput work, while uploads, callbacks and the admin wait for
# an answer: on a machine they share (make up, one host of compose), the kernel then serves those
# first and detection takes the rest, so the cores stay as busy and the answers come sooner.
DETECTOR_NICE = env.int("DETECTOR_NICE", default=5)
# A safety net under the engines' own bounds: a pool process whose resident memory passes this
# many MB after a task is replaced by a fresh one (Celery's worker_max_memory_per_child; the task
# finishes first, nothing is lost; the new process loads the detector again). The engines keep
# themselves under it (mtcnn@1.2.0 levels off near 600 MB whatever photo sizes come, the torch
# engine near 850 MB: docs/benchmarks.md); 0: no limit.
WORKER_MAX_MEMORY_MB = env.int("WORKER_MAX_MEMORY_MB", default=1536)

# --- Uploaded models (POST /api/v1/models/, detector_register --artifact) ----------------------
# The largest model file accepted, in bytes (413 beyond). YOLO11x's ONNX is about 220 MB.
MODEL_ARTIFACT_MAX_BYTES = env.int("MODEL_ARTIFACT_MAX_BYTES", default=512 * 1024 * 1024)
# The check before a file is accepted runs in a child process with these limits: seconds of
# wall time, and bytes of address space (RLIMIT_AS).
MODEL_CHECK_SECONDS = env.float("MODEL_CHECK_SECONDS", default=120.0)
MODEL_CHECK_MEMORY_BYTES = env.int("MODEL_CHECK_MEMORY_BYTES", default=4 * 1024 * 1024 * 1024)
# Where a worker keeps the model files it fetched from the bucket, by sha256, and how many bytes
# of them at most (the least recently used are removed first).
MODEL_CACHE_DIR = BASE_DIR / env("MODEL_CACHE_DIR", default="var/model-cache")  # relative: to the project (an absolute path stays)
MODEL_CACHE_MAX_BYTES = env.int("MODEL_CACHE_MAX_BYTES", default=2 * 1024 * 1024 * 1024)

# --- Jobs -------------------------------------------------------------------------------------
# Transient errors (storage, database) are retried with exponential backoff and full jitter.
JOB_RETRY_BACKOFF_BASE = env.float("JOB_RETRY_BACKOFF_BASE", default=2.0)
JOB_RETRY_BACKOFF_MAX = env.float("JOB_RETRY_BACKOFF_MAX", default=60.0)
JOB_MAX_RETRIES = env.int("JOB_MAX_RETRIES", default=6)
# The sweeper (Celery beat, every SWEEP_INTERVAL seconds) re-publishes jobs whose chain was never
# published (after JOB_UNPUBLISHED_GRACE seconds) or that stayed queued JOB_QUEUED_TIMEOUT seconds
# after publishing, at most JOB_MAX_ENQUEUES times, then fails them with code "stuck".
SWEEP_INTERVAL = env.float("SWEEP_INTERVAL", default=30.0)
JOB_UNPUBLISHED_GRACE = env.float("JOB_UNPUBLISHED_GRACE", default=30.0)
JOB_QUEUED_TIMEOUT = env.float("JOB_QUEUED_TIMEOUT", default=3600.0)
# Sooner: a job still queued JOB_QUEUED_STUCK seconds after publishing (and its last retry) while
# a job published after it has already started (the queue moved past it: its message was lost). Keep it above
# JOB_RETRY_BACKOFF_MAX, the longest a retry waits before its message comes back.
JOB_QUEUED_STUCK = env.float("JOB_QUEUED_STUCK", default=120.0)
JOB_MAX_ENQUEUES = env.int("JOB_MAX_ENQUEUES", default=3)

# --- Rollouts ----------------------------------------------------------------------------------
# How often Celery beat evaluates the live rollout's guardrails and stages (seconds).
ROLLOUT_EVALUATE_INTERVAL = env.float("ROLLOUT_EVALUATE_INTERVAL", default=15.0)
# Where an automatic rollback is announced: a POST signed like the callbacks (empty: none). An
# operator's own URL, so the callbacks' public-address rule does not apply to it.
ROLLOUT_ALERT_URL = env("ROLLOUT_ALERT_URL", default="")
# How often each detection worker process loads the live rollout's versions and reports which it
# holds (the rollout's "workers warm", blue-green's switch).
WORKER_HEARTBEAT_SECONDS = env.float("WORKER_HEARTBEAT_SECONDS", default=5.0)

# --- Callbacks ---------------------------------------------------------------------------------
CALLBACK_CONNECT_TIMEOUT = env.float("CALLBACK_CONNECT_TIMEOUT", default=3.0)
CALLBACK_READ_TIMEOUT = env.float("CALLBACK_READ_TIMEOUT", default=10.0)
# A whole try (connect, send, answer) ends after this many seconds however slowly the receiver
# sends; a status line that came in time counts, the rest of the answer is cut.
CALLBACK_TOTAL_TIMEOUT = env.float("CALLBACK_TOTAL_TIMEOUT", default=15.0)
# Callback POSTs in flight at once in each delivery worker process (threads of its sender: a
# POST waiting on a receiver holds a thread, not a worker slot).
CALLBACK_MAX_IN_FLIGHT = env.int("CALLBACK_MAX_IN_FLIGHT", default=64)
# POSTs in flight at once to one receiver (host:port), across all delivery workers: the rest of
# its backlog waits its turn while other receivers are served.
CALLBACK_MAX_IN_FLIGHT_PER_HOST = env.int("CALLBACK_MAX_IN_FLIGHT_PER_HOST", default=4)
# Circuit breaker per receiver: after this many failed tries in a row (timeouts, network errors,
# 408, 429, 5xx) nothing is sent to it for CALLBACK_BREAKER_PAUSE seconds; then one try goes
# through, which closes the breaker or opens it again. Tries not made do not count as attempts.
CALLBACK_BREAKER_FAILURES = env.int("CALLBACK_BREAKER_FAILURES", default=5)
CALLBACK_BREAKER_PAUSE = env.float("CALLBACK_BREAKER_PAUSE", default=60.0)
# Whether a detect worker sends a finished job's first callback try itself, from a thread of its
# own (the POST never holds the detection slot), instead of publishing the delivery task to the
# deliverer: a Celery message, a task and a read of the job fewer per photo. Retries,
# redeliveries and tries whose receiver is at its cap stay with the deliverer. Turn it off where
# the detection hosts have no way out to the receivers (only the deliverers do).
DETECT_SENDS_CALLBACKS = env.bool("DETECT_SENDS_CALLBACKS", default=True)
# How often each delivery worker process looks for due deliveries (retries, and deliveries
# made elsewhere) besides being woken by its own tasks.
CALLBACK_SENDER_POLL = env.float("CALLBACK_SENDER_POLL", default=0.5)
# Seconds to wait before each retry of a failed delivery; their number bounds the retries. The
# default follows the Standard Webhooks schedule: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
CALLBACK_RETRY_DELAYS = [
    float(s) for s in env.list("CALLBACK_RETRY_DELAYS", default=["5", "300", "1800", "7200", "18000", "36000", "36000"])
]
# A receiver's Retry-After is honoured up to this many seconds.
CALLBACK_RETRY_AFTER_MAX = env.float("CALLBACK_RETRY_AFTER_MAX", default=36000.0)
# No longer used: every retry waits in the delivery row until the sender finds it due.
CALLBACK_COUNTDOWN_MAX = env.float("CALLBACK_COUNTDOWN_MAX", default=60.0)
# Standard Webhooks secret: "whsec_" + base64 of at least 24 random bytes.
CALLBACK_SIGNING_SECRET = env("CALLBACK_SIGNING_SECRET")
# CIDR ranges a callback_url may resolve to although they are not public (empty: none).
CALLBACK_ALLOWED_NETWORKS = env.list("CALLBACK_ALLOWED_NETWORKS", default=[])

# --- Batches ----------------------------------------------------------------------------------
# Most items in one batch (POST /api/v1/batches/); a larger one is refused whole.
BATCH_MAX_ITEMS = env.int("BATCH_MAX_ITEMS", default=10000)

# --- Celery ------------------------------------------------------------------------------------
CELERY_BROKER_URL = env("CELERY_BROKER_URL")
CELERY_RESULT_BACKEND = env("CELERY_RESULT_BACKEND")
CELERY_QUEUE_DETECT = env("CELERY_QUEUE_DETECT", default="detect")
CELERY_QUEUE_DELIVER = env("CELERY_QUEUE_DELIVER", default="deliver")
# The items of batches (POST /api/v1/batches/) wait here, not on the detect queue: the detect
# workers consume both, so a single upload waits for a free pool process, not behind a whole
# batch (docs/batches.md has the measurement).
CELERY_QUEUE_DETECT_BATCH = env("CELERY_QUEUE_DETECT_BATCH", default="detect-batch")
# Where a task message goes when its transient error (database, storage) outlived every retry and
# not even the failure could be recorded: no worker consumes it; the sweeper records each one
# (jobs.DeadLetter, in the admin) once the database is back (docs/reliability.md).
CELERY_QUEUE_DEAD = env("CELERY_QUEUE_DEAD", default="dead")
# Each queue has a direct exchange of its own, named after it, and is bound to it with its own name
# as the routing key: a message for one queue can never land in the other. (Releases before this
# bound both queues to one shared exchange, named after the detect queue, with key "detect"; on
# such a broker run `manage.py broker_migrate` once: docs/operations.md.)
# Durable queues and exchanges and persistent messages: queued jobs survive a broker restart.
CELERY_TASK_DEFAULT_QUEUE = CELERY_QUEUE_DETECT
CELERY_TASK_DEFAULT_EXCHANGE = CELERY_QUEUE_DETECT
CELERY_TASK_DEFAULT_EXCHANGE_TYPE = "direct"
CELERY_TASK_DEFAULT_ROUTING_KEY = CELERY_QUEUE_DETECT
CELERY_TASK_QUEUES = tuple(
    Queue(_name, Exchange(_name, type="direct", durable=True), routing_key=_name, durable=True)
    for _name in (CELERY_QUEUE_DETECT, CELERY_QUEUE_DELIVER, CELERY_QUEUE_DETECT_BATCH)
)
CELERY_TASK_DEFAULT_DELIVERY_MODE = "persistent"


def _route(queue: str) -> dict[str, str]:
    return {"queue": queue, "exchange": queue, "routing_key": queue}


CELERY_TASK_ROUTES = {
    "workers.tasks.detect_faces": _route(CELERY_QUEUE_DETECT),
    "workers.tasks.deliver_result": _route(CELERY_QUEUE_DELIVER),
    "workers.tasks.deliver_callback": _route(CELERY_QUEUE_DELIVER),
    "workers.tasks.sweep": _route(CELERY_QUEUE_DELIVER),
    "workers.tasks.expire_jobs": _route(CELERY_QUEUE_DELIVER),
    # A shadow run needs a detector: detection workers run it, after the client's own jobs.
    "workers.tasks.shadow_detect": _route(CELERY_QUEUE_DETECT),
    "workers.tasks.evaluate_rollouts": _route(CELERY_QUEUE_DELIVER),
    "workers.tasks.send_rollout_alert": _route(CELERY_QUEUE_DELIVER),
    "workers.tasks.retention_sweep": _route(CELERY_QUEUE_DELIVER),
}
CELERY_BEAT_SCHEDULE = {
    "sweep-stuck-jobs-and-due-callbacks": {"task": "workers.tasks.sweep", "schedule": SWEEP_INTERVAL},
    # Queued jobs past their expires_at end "expired" (and are called back) without waiting for
    # a worker to reach them.
    "expire-queued-jobs": {
        "task": "workers.tasks.expire_jobs",
        "schedule": JOB_EXPIRE_INTERVAL,
        "options": {"expires": JOB_EXPIRE_INTERVAL},
    },
    # Expires: evaluations that piled up while no deliverer ran would judge the same window
    # back to back and could reach consecutive_breaches in seconds.
    "evaluate-rollout-guardrails": {
        "task": "workers.tasks.evaluate_rollouts",
        "schedule": ROLLOUT_EVALUATE_INTERVAL,
        "options": {"expires": ROLLOUT_EVALUATE_INTERVAL},
    },
    # Does nothing while both RETENTION_DAYS_* are 0 but finish erasures the store refused.
    "delete-expired-photos": {
        "task": "workers.tasks.retention_sweep",
        "schedule": RETENTION_INTERVAL,
        "options": {"expires": RETENTION_INTERVAL},
    },
}
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_RESULT_EXPIRES = env.int("CELERY_RESULT_EXPIRES", default=24 * 3600)
# A job must survive a worker that dies mid-task: acknowledge after the task ran, requeue when
# the worker process is lost, and take one message at a time so none waits behind a slow job.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_WORKER_MAX_MEMORY_PER_CHILD = WORKER_MAX_MEMORY_MB * 1024 or None  # Celery counts KiB
CELERY_TASK_SOFT_TIME_LIMIT = env.int("CELERY_TASK_SOFT_TIME_LIMIT", default=120)
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", default=180)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_CONNECTION_TIMEOUT = env.float("CELERY_BROKER_CONNECTION_TIMEOUT", default=4.0)
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5}
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# Celery's Django fixup closes the database connection before and after every task unless this
# is set (it then closes them every 2 x this many tasks): a new PostgreSQL connection per task
# cost a backend start and a login each time. Kept instead, under DATABASE_CONN_MAX_AGE and the
# health check, as the API keeps its (workers/signals.py: close_old_connections around each task).
# 0: a connection per task, as before.
CELERY_DB_REUSE_MAX = env.int("CELERY_DB_REUSE_MAX", default=1_000_000) or None
# A new worker process loads the detector before taking work (workers/process.py): give it time.
CELERY_WORKER_PROC_ALIVE_TIMEOUT = 60
if CELERY_BROKER_URL.startswith("filesystem://"):
    # The embedded fallback of the local runner: a broker made of folders.
    _broker_dir = Path(env("CELERY_BROKER_FOLDER", default=str(BASE_DIR / "var" / "broker")))
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "out"),
        "data_folder_out": str(_broker_dir / "out"),
        "processed_folder": str(_broker_dir / "processed"),
        "store_processed": False,
        # Exchange tables and the pidbox (Kombu's default: ./control in the working directory).
        "control_folder": str(_broker_dir / "control"),
    }
    for _sub in ("out", "processed", "control"):
        (_broker_dir / _sub).mkdir(parents=True, exist_ok=True)

# --- Metrics (Prometheus; docs/observability.md) ------------------------------------------------
# The directory where every process of this host (gunicorn workers, Celery pool processes)
# writes its metrics for one scrape to add up; unset: single-process mode. Read by
# prometheus_client itself when first imported, which takes the variable's mere presence for a
# directory: an empty one is removed here, before anything imports it.
PROMETHEUS_MULTIPROC_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
if not PROMETHEUS_MULTIPROC_DIR:
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
# CIDR ranges whose addresses may read GET /metrics (comma separated); empty: everyone.
METRICS_ALLOWED_NETWORKS = env.list("METRICS_ALLOWED_NETWORKS", default=[])
# A Celery worker serves its pool processes' metrics on this port (all interfaces); 0: off.
WORKER_METRICS_PORT = env.int("WORKER_METRICS_PORT", default=0)

# --- Logging -----------------------------------------------------------------------------------
LOG_LEVEL = env("LOG_LEVEL", default="INFO")
# json (the default): every line one JSON object, for log collectors: time (ISO 8601, UTC),
# level, logger, process, message, exc_info, and the request or job in hand (http_request_id,
# job_id, request_id, model_version, cohort, rollout, variant, task, task_id: docs/observability.md).
# text: the same lines for a person at a terminal, the fields as key=value at the end.
LOG_FORMAT = env("LOG_FORMAT", default="json").strip().lower()
# One handler on the root logger for every process (API, workers, beat); core/logging.py has the
# formatters and the context. gunicorn's own lines use the same (face_detect_api/gunicorn_conf.py),
# and the access log is one line per request from api.middleware.RequestIdMiddleware.
LOGGING = logging_config(fmt=LOG_FORMAT, level=LOG_LEVEL)
# Python's warnings (a library's UserWarning, a deprecation) become log records of the logger
# "py.warnings", so they are JSON lines too instead of bare text on stderr.
logging.captureWarnings(True)

# --- Production guard --------------------------------------------------------------------------
# DJANGO_ENV=production refuses to start on the development defaults above.
DJANGO_ENV = env("DJANGO_ENV", default="development")
DEV_SECRET_KEY = "dev-insecure-secret-key-change-me"
DEV_SIGNING_SECRET = "whsec_ZGV2ZWxvcG1lbnQtb25seS1zaWduaW5nLXNlY3JldC0zMmI="


def production_problems() -> list[str]:
    """What makes these settings unfit for production (empty when they are fine)."""
    problems = []
    if DEBUG:
        problems.append("DJANGO_DEBUG must be False")
    if SECRET_KEY == DEV_SECRET_KEY or len(SECRET_KEY) < 50:
        problems.append("DJANGO_SECRET_KEY must be a random value of 50+ characters, not the development one")
    if not ALLOWED_HOSTS or "*" in ALLOWED_HOSTS:
        problems.append("DJANGO_ALLOWED_HOSTS must name the service's hosts (not empty, not *)")
    if CALLBACK_SIGNING_SECRET == DEV_SIGNING_SECRET:
        problems.append("CALLBACK_SIGNING_SECRET must not be the development secret")
    if not 1 <= S3_PRESIGN_SECONDS <= 3600:
        problems.append("S3_PRESIGN_SECONDS must be between 1 and 3600")
    return problems


if DJANGO_ENV == "production":
    from django.core.exceptions import ImproperlyConfigured

    if _problems := production_problems():
        raise ImproperlyConfigured("refusing to start in production: " + "; ".join(_problems))
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = True
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
