"""gunicorn's settings: how many processes and threads serve the API, and its own log lines (the
master's and the workers') in LOG_FORMAT, with no access log of its own (api.middleware writes
one line per request, with the request id).

Used as ``gunicorn --config python:face_detect_api.gunicorn_conf``; options on the command line
win over these. The master never loads Django, so env.env is read here the way settings.py
reads it (the real environment wins).

The API's requests are short and wait a good part of their time (the upload's S3 PUT, the
database's commit, the broker): threaded workers (gthread) keep several in flight per process
while the GIL lets one compute, and a process per core uses the cores. Keep-alive spares a client that sends many
uploads a TCP handshake each. docs/configuration.md and docs/benchmarks.md have the figures.
"""

import os
from pathlib import Path

import environ

from core.logging import logging_config
from core.system import usable_cores

environ.Env.read_env(str(Path(__file__).resolve().parent.parent / "env.env"))


def _int(name: str, default: int) -> int:
    """A whole number from the environment; empty or unset: ``default``."""
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


# Processes (WEB_WORKERS; empty: one per core, at least 2, so that a slow request or a restart
# never leaves the API without a free process) and threads per process (WEB_THREADS; 1: the
# plain sync worker).
workers = _int("WEB_WORKERS", max(2, usable_cores()))
threads = _int("WEB_THREADS", 8)
worker_class = "gthread" if threads > 1 else "sync"
# Seconds an idle keep-alive connection is held open for its next request (WEB_KEEPALIVE).
keepalive = _int("WEB_KEEPALIVE", 5)

accesslog = None
loglevel = os.environ.get("LOG_LEVEL", "INFO").lower()
logconfig_dict = logging_config(fmt=os.environ.get("LOG_FORMAT", "json").strip().lower(), level=os.environ.get("LOG_LEVEL", "INFO"))
