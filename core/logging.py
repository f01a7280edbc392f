"""Structured logs: one JSON object per line, carrying the request or job in hand.

Every process (gunicorn and its workers, Celery workers and beat) logs through one handler with
one of two formatters, picked by LOG_FORMAT: ``json`` (the default, for log collectors) or
``text`` (for a person at a terminal). ``logging_config`` builds that configuration: Django's
LOGGING and gunicorn's logconfig_dict are both made by it.

The context is a ``contextvars`` variable, so it belongs to the thread (or task) that set it and
never leaks into another: ``log_context(**fields)`` adds fields for the length of a ``with``
block, ``log_context_open``/``log_context_close`` do the same for a pair of hooks that cannot
share a block (Celery's task_prerun and task_postrun), and ``ContextFilter`` copies the current
fields onto each record. Fields given with ``extra=`` win over the context's.

Plain Python: no Django, so gunicorn's master process can use it before any settings exist.
"""

import contextvars
import datetime as dt
import json
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType
from typing import Any

FORMATS = ("json", "text")

# The attributes every LogRecord has: anything else on a record came from the context or extra=.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}
# The keys the formatter writes itself; a context field may not take one of their names either.
_RESERVED = _RECORD_ATTRS | {"time", "level", "logger"}

# The fields in hand. Never mutated: each scope sets a new mapping, so resetting its token puts
# back exactly what was there before, whatever the scope added in between.
_EMPTY: Mapping[str, Any] = MappingProxyType({})
_fields: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar("fda_log_fields", default=_EMPTY)
# How many scopes are open here: log_context_add outside any scope would outlive its caller.
_depth: contextvars.ContextVar[int] = contextvars.ContextVar("fda_log_depth", default=0)


def _checked(fields: Mapping[str, Any]) -> dict[str, Any]:
    clash = _RESERVED.intersection(fields)
    if clash:
        raise ValueError(f"log context fields may not be named {sorted(clash)}: LogRecord uses those names")
    # None means "not known": the key is left out rather than written as null.
    return {key: value for key, value in fields.items() if value is not None}


def log_context_open(**fields: Any) -> tuple[contextvars.Token, contextvars.Token]:
    """Open a scope with these fields added; close it with ``log_context_close(token)``."""
    return _fields.set(MappingProxyType({**_fields.get(), **_checked(fields)})), _depth.set(_depth.get() + 1)


def log_context_close(token: tuple[contextvars.Token, contextvars.Token]) -> None:
    """Close a scope: the fields are again what they were when it was opened."""
    fields_token, depth_token = token
    _fields.reset(fields_token)
    _depth.reset(depth_token)


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add fields to every log line written inside the block (and in what it calls)."""
    token = log_context_open(**fields)
    try:
        yield
    finally:
        log_context_close(token)


def log_context_add(*, keep_existing: bool = False, **fields: Any) -> None:
    """Add fields to the innermost open scope, until it closes (the fields of a job a task has
    just loaded). ``keep_existing``: fields already set keep their value (a Celery header's
    request id wins over the one on the job's row). Outside any scope it does nothing: a
    function called outside a request or task must not leave fields behind for whatever runs
    next in this thread."""
    if _depth.get() == 0:
        return
    current = _fields.get()
    added = _checked(fields)
    if keep_existing:
        added = {key: value for key, value in added.items() if key not in current}
    _fields.set(MappingProxyType({**current, **added}))


def log_context_get(name: str, default: Any = None) -> Any:
    """One field of the current context."""
    return _fields.get().get(name, default)


def log_context_fields() -> dict[str, Any]:
    """A copy of the current context."""
    return dict(_fields.get())


class ContextFilter(logging.Filter):
    """Copies the current context onto each record (on the handler, so that records of every
    logger get it; a logger's own filters see only records logged on that very logger)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _fields.get().items():
            # extra= fields of this one call win.
            record.__dict__.setdefault(key, value)
        return True


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields of a record beyond the standard ones: its context and its extra=."""
    return {key: value for key, value in record.__dict__.items() if key not in _RECORD_ATTRS and not key.startswith("_")}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (ISO 8601, UTC), level, logger, process, message, the
    context and extra= fields, and exc_info (the traceback's text) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        created = dt.datetime.fromtimestamp(record.created, tz=dt.UTC)
        payload: dict[str, Any] = {
            "time": created.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "process": record.process,
            "message": record.getMessage(),
        }
        payload.update(record_fields(record))
        if record.exc_info:
            payload["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            payload["exc_info"] = record.exc_text
        if record.stack_info:
            payload["stack_info"] = self.formatStack(record.stack_info)
        # default=str: a UUID or a datetime in extra= must not cost the line. ASCII only, so a
        # terminal or a collector with any encoding reads every line.
        try:
            return json.dumps(payload, default=str)
        except (TypeError, ValueError):
            # A value json cannot take even as str (a structure that contains itself): its repr.
            return json.dumps(
                {key: value if isinstance(value, (str, int, float, bool, type(None))) else repr(value) for key, value in payload.items()}
            )


class TextFormatter(logging.Formatter):
    """A line for people: time, level, logger, process, message, then the fields as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = record_fields(record)
        if not fields:
            return line
        head, newline, tail = line.partition("\n")  # the fields stay on the message's line
        return head + " " + " ".join(f"{key}={value}" for key, value in fields.items()) + newline + tail


def formatter(fmt: str) -> logging.Formatter:
    """The formatter of LOG_FORMAT ``fmt``."""
    if fmt not in FORMATS:
        raise ValueError(f"LOG_FORMAT must be one of {', '.join(FORMATS)}, not {fmt!r}")
    return JsonFormatter() if fmt == "json" else TextFormatter()


def adopt_handlers(logger: logging.Logger, fmt: str) -> None:
    """Give the handlers someone else put on ``logger`` (Celery's, on its task logger) this
    project's formatter and context filter."""
    for handler in logger.handlers:
        handler.setFormatter(formatter(fmt))
        if not any(isinstance(f, ContextFilter) for f in handler.filters):
            handler.addFilter(ContextFilter())


def logging_config(*, fmt: str, level: str) -> dict[str, Any]:
    """A logging.config.dictConfig configuration: everything to the root logger, whose one
    handler writes ``fmt`` lines to stderr with the context."""
    formatter(fmt)  # an unknown format fails here, at start-up, rather than at the first line
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": "core.logging.ContextFilter"}},
        "formatters": {
            "json": {"()": "core.logging.JsonFormatter"},
            "text": {"()": "core.logging.TextFormatter"},
        },
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": fmt, "filters": ["context"]}},
        "root": {"handlers": ["console"], "level": level},
        "loggers": {
            # Django's own handlers (its console in DEBUG, mail_admins) would write lines of
            # another shape: everything goes through the root's handler instead.
            "django": {"handlers": [], "level": "INFO", "propagate": True},
            # runserver's access log: the access logger (api.middleware) writes one per request.
            "django.server": {"handlers": [], "propagate": False},
            "django.db.backends": {"level": "INFO"},
            # gunicorn's master and workers, when gunicorn uses this configuration; its access
            # log stays off (api.middleware writes it).
            "gunicorn.error": {"handlers": [], "propagate": True},
            "gunicorn.access": {"handlers": [], "propagate": False},
        },
    }
