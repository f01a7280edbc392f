"""gunicorn's settings: its own log lines (the master's and the workers') in LOG_FORMAT, and no
access log of its own (api.middleware writes one line per request, with the request id).

Used as ``gunicorn --config python:face_detect_api.gunicorn_conf``; options on the command line
win over these. The master never loads Django, so env.env is read here the way settings.py
reads it (the real environment wins).
"""

import os
from pathlib import Path

import environ

from core.logging import logging_config

environ.Env.read_env(str(Path(__file__).resolve().parent.parent / "env.env"))

accesslog = None
loglevel = os.environ.get("LOG_LEVEL", "INFO").lower()
logconfig_dict = logging_config(fmt=os.environ.get("LOG_FORMAT", "json").strip().lower(), level=os.environ.get("LOG_LEVEL", "INFO"))
