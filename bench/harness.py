"""What the benchmarks share, so that each script holds only what it measures.

    parser = argparse.ArgumentParser(...)
    harness.add_service_flags(parser)          # --url --key --start (--start-stack) --embedded --keep --ready-timeout
    args = parser.parse_args()
    harness.check_service_flags(parser, args)  # --url on loopback unless --start

    def measure() -> int:
        with harness.service(args, key_name="bench-x", prefix="fda-bench-x") as svc:
            api = harness.Api(svc.base, svc.key)
            ...
            return 0

    return harness.guarded("bench/x.py", measure)

The service is either a running one (--url, this process's environment being the service's for
`manage.py`) or, with --start, a stack of its own: `python -m devstack up` as devstack/smoke.py
runs it (devstack/stack.py), in a temporary var dir on free API and S3 ports, with its own bucket
and queues, its own PostgreSQL database when PostgreSQL answers (dropped after) or the embedded
stand-ins (--embedded forces them). The API key comes from --key (or FDA_API_KEY); otherwise, and
always on a stack of its own (whose database is its own), one is made with `manage.py
create_api_key` and, on a running service, revoked at the end. The stack is always stopped and
cleaned up; its var dir stays on --keep or a failure.
"""

import argparse
import datetime as dt
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import requests

from devstack.net import answers
from devstack.runner import ROOT, embedded_fallbacks, load_env
from devstack.stack import Stack, StackFailed, free_port, refusing_port, stack_env, wait_ready

PHOTOS = ROOT / "tests" / "data" / "photos"
CONTENT_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
TERMINAL = {"completed", "failed"}
# A stack of a bench's own runs without the upload rate limits, which would measure themselves.
NO_LIMITS = {"API_RATE_LIMIT": "", "API_UPLOAD_RATE_LIMIT": ""}


class BenchFailed(Exception):
    pass


# What ends a bench as a failure it can name: its own, or its stack died or never got ready.
FAILURES = (BenchFailed, StackFailed)


def say(message: str = "") -> None:
    print(message, flush=True)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank, q from 0 to 100) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def parse_at(value: str) -> dt.datetime:
    """A timestamp of the API (ISO 8601, ``Z`` for UTC)."""
    return dt.datetime.fromisoformat(value)


def banner(title: str, *details: str) -> str:
    """A report's first line: ``== TITLE (date UTC, N cores[, details], load average ...) ==``."""
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    parts = [f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC", f"{os.cpu_count()} cores", *details, f"load average {load}"]
    return f"== {title} ({', '.join(parts)}) =="


def guarded(name: str, body: Callable[[], int]) -> int:
    """``body()``'s exit status; a failure, an interruption or an unexpected error is said in one
    line (``NAME: FAILED: ...``) and ends with 1."""
    try:
        return body()
    except FAILURES as exc:
        say(f"{name}: FAILED: {exc}")
    except KeyboardInterrupt:
        say(f"{name}: interrupted")
    except Exception as exc:  # noqa: BLE001 - a network error, an unexpected answer: a failure all the same
        say(f"{name}: FAILED: {type(exc).__name__}: {exc}")
    return 1


# --- manage.py, with the service's environment ----------------------------------------------------


def manage(env: dict[str, str], *args: str, timeout: float = 300) -> str:
    """Run `manage.py ARGS` with ``env`` (the service's); its stdout, or BenchFailed."""
    try:
        done = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchFailed(f"manage.py {' '.join(args)} still running after {timeout:.0f} s") from exc
    if done.returncode != 0:
        raise BenchFailed(f"manage.py {' '.join(args)} exited with {done.returncode}: {done.stderr.strip()[-800:]}")
    return done.stdout


def api_key_create(env: dict[str, str], name: str, *flags: str) -> tuple[str, str]:
    """A new API key named ``name`` in the service's database (`manage.py create_api_key`): the
    key, and its prefix for api_key_revoke."""
    key = manage(env, "create_api_key", name, *flags).strip().splitlines()[-1]
    return key, key.split("_")[1]


def api_key_revoke(env: dict[str, str], prefix: str | None) -> None:
    """Revoke a key the bench made (none: nothing to do); a failure is said, not raised, as the
    bench is on its way out."""
    if not prefix:
        return
    try:
        manage(env, "revoke_api_key", prefix)
    except BenchFailed as exc:
        say(f"could not revoke the bench's key {prefix}: {exc}")


# --- HTTP ------------------------------------------------------------------------------------------


class Api:
    """The service's API with one key; 429 answers are waited out (Retry-After), within a bound."""

    def __init__(self, base: str, key: str) -> None:
        self.base = base.rstrip("/")
        self.session = requests.Session()
        self.session.trust_env = False  # loopback only: no proxy from the environment
        self.session.headers["X-API-Key"] = key

    def call(self, method: str, path: str, *, expect: tuple[int, ...] = (200,), patience: float = 60, **kwargs) -> requests.Response:
        deadline = time.monotonic() + patience
        while True:
            response = self.session.request(method, f"{self.base}{path}", timeout=30, **kwargs)
            if response.status_code == 429 and time.monotonic() < deadline:
                time.sleep(min(float(response.headers.get("Retry-After") or 1), 10))
                continue
            if response.status_code not in expect:
                raise BenchFailed(f"{method} {path} answered {response.status_code}: {response.text[:400]}")
            return response

    def active_version(self) -> str | None:
        page, number = {"next": True}, 1
        while page.get("next") and number <= 20:
            page = self.call("GET", "/api/v1/models/", params={"page_size": 200, "page": number}).json()
            for version in page["results"]:
                if version["active"]:
                    return version["id"]
            number += 1
        return None

    def jobs(self, ids: set[str]) -> dict[str, dict]:
        """Our jobs by id, from the newest-first list (a few pages), then one by one for any not
        found there (a --key whose client has many other jobs)."""
        found: dict[str, dict] = {}
        page, number = {"next": True}, 1
        while page.get("next") and number <= 10 and len(found) < len(ids):
            page = self.call("GET", "/api/v1/images/", params={"page_size": 200, "page": number}).json()
            found.update({job["id"]: job for job in page["results"] if job["id"] in ids})
            number += 1
        for missing in ids - set(found):
            found[missing] = self.call("GET", f"/api/v1/images/{missing}/").json()
        return found


class Receiver:
    """A loopback HTTP server that keeps every POST it is sent (callbacks, rollout alerts), each
    as {"headers", "body" (bytes), "at" (arrival, UTC)}, and answers ``status``."""

    def __init__(self, path: str = "/hook", status: int = 204) -> None:
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append({"headers": dict(self.headers.items()), "body": body, "at": dt.datetime.now(dt.UTC)})
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{path}"
        threading.Thread(target=self.server.serve_forever, name="receiver", daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- A stack of the bench's own ---------------------------------------------------------------------


def delete_queues(broker: str, names: list[str]) -> list[str]:
    """Delete the queues ``names`` of the AMQP ``broker`` and their exchanges (each queue has an
    exchange of its own name: settings' CELERY_TASK_QUEUES). The problems met (none: [])."""
    if not broker.startswith("amqp"):
        return []
    from kombu import Connection

    try:
        with Connection(broker, connect_timeout=5) as conn:
            channel = conn.default_channel
            for name in dict.fromkeys(names):  # a bench may give two roles one queue
                channel.queue_delete(name)
                channel.exchange_delete(name)
    except Exception as exc:  # noqa: BLE001 - said, not raised: the bench is on its way out
        return [f"could not delete the queues: {type(exc).__name__}: {exc}"]
    return []


def drop_database(url: str, name: str) -> list[str]:
    """Drop PostgreSQL database ``name`` of the server at ``url``. The problems met (none: [])."""
    import psycopg2
    from psycopg2 import sql

    parts = urlsplit(url)
    try:
        conn = psycopg2.connect(
            dbname="postgres", host=parts.hostname, port=parts.port or 5432, user=parts.username, password=parts.password
        )
        conn.autocommit = True
        with conn.cursor() as cursor:
            # FORCE: a connection the stopped processes left half-closed must not keep it alive.
            cursor.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.close()
    except Exception as exc:  # noqa: BLE001 - said, not raised: the bench is on its way out
        return [f"could not drop database {name}: {type(exc).__name__}: {exc}"]
    return []


class OwnStack:
    """`python -m devstack up` on free ports in a temporary var dir (devstack/stack.py), with its
    own queues, bucket and database (all named after ``prefix``), ``extra_env`` on top: made here,
    started by start(), cleaned up by close()."""

    def __init__(self, prefix: str, *, embedded: bool = False, extra_env: dict[str, str] | None = None) -> None:
        load_env()  # env.env under the environment (which wins), as `devstack up` reads it
        self.extra_env = dict(extra_env or {})
        self.var = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
        self.dead = refusing_port() if embedded else None
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.database: str | None = None
        self.stack: Stack | None = None
        env = stack_env(self.var, self.port, prefix=prefix, dead_port=self.dead.getsockname()[1] if self.dead else None)
        env.update(self.extra_env)
        if self.dead is None and env["DATABASE_URL"].startswith("postgres") and answers(env["DATABASE_URL"]):
            # A database of its own (`devstack up` creates it): a developer's rollouts, versions
            # and keys are never touched, and the whole of it is dropped after.
            self.database = f"{prefix.replace('-', '_')}_{env['FDA_RUN']}"
            env["DATABASE_URL"] = urlunsplit(urlsplit(env["DATABASE_URL"])._replace(path=f"/{self.database}"))
        elif self.dead is None:
            env["DATABASE_URL"] = f"sqlite:///{self.var / 'db.sqlite3'}"
        self.env = env
        # What `devstack up` gives its children (the stand-ins for what does not answer), for manage.py.
        self.service_env = {**env, **embedded_fallbacks(env)}
        self.replaced = sorted(k for k in self.service_env if self.service_env[k] != env.get(k))
        self.description = (
            f"own stack on {self.base}: "
            + (f"embedded stand-ins for {', '.join(self.replaced)}; " if self.replaced else "")
            + f"database {self.database or self.service_env['DATABASE_URL'].split('://')[0]}, "
            f"queues {env['CELERY_QUEUE_DETECT']}/{env['CELERY_QUEUE_DELIVER']}, bucket {env['S3_BUCKET']}, "
            + "".join(f"{name}={value!r}, " for name, value in self.extra_env.items())
            + f"var dir {self.var}"
        )

    @property
    def log_path(self) -> Path:
        return self.var / "devstack.log"

    def start(self) -> None:
        """Start `devstack up` (without waiting for it)."""
        self.stack = Stack(self.env, self.log_path)

    def ready(self, timeout: float) -> None:
        """Wait until it answers /readyz; StackFailed when it dies or the time is up."""
        wait_ready(self.stack, self.base, timeout)

    def root_pid(self) -> int:
        return self.stack.process.pid

    def log_tail(self, lines: int) -> str:
        return "\n".join(self.stack.log().splitlines()[-lines:]) if self.stack is not None else ""

    def close(self, *, keep: bool) -> list[str]:
        """Stop the stack, then remove what it made outside its var dir: its queues and its
        database; the var dir too unless ``keep`` or a problem. Returns the problems met."""
        problems = []
        if self.stack is not None:
            rc = self.stack.stop()
            if rc != 0:
                problems.append(f"`devstack up` did not stop cleanly on SIGTERM (exit {rc})")
            problems += delete_queues(
                self.service_env["CELERY_BROKER_URL"],
                [self.env["CELERY_QUEUE_DETECT"], self.env["CELERY_QUEUE_DELIVER"], self.env["CELERY_QUEUE_DETECT_BATCH"]],
            )
            if self.database:
                problems += drop_database(self.service_env["DATABASE_URL"], self.database)
        if self.dead is not None:
            self.dead.close()
        if self.stack is not None and (keep or problems):
            say(f"stack: state kept in {self.var} (log: {self.log_path})")
        else:
            shutil.rmtree(self.var, ignore_errors=True)
        return problems


# --- The service a bench drives: flags, and the context that sets it up and tears it down -------------


def add_stack_flags(parser: argparse.ArgumentParser) -> None:
    """--embedded, --keep and --ready-timeout: how a stack of the bench's own runs."""
    parser.add_argument(
        "--embedded", action="store_true", help="a stack of its own uses the embedded stand-ins even where the services answer"
    )
    parser.add_argument("--keep", action="store_true", help="keep a stack's temporary var dir (kept anyway on failure)")
    parser.add_argument(
        "--ready-timeout", type=float, default=300, help="most seconds until a stack of its own answers /readyz (default 300)"
    )


def add_service_flags(parser: argparse.ArgumentParser, *, key_help: str = "an API key") -> None:
    """--url, --key, --start (also --start-stack) and add_stack_flags'."""
    parser.add_argument(
        "--url",
        default=os.environ.get("FDA_URL", "http://127.0.0.1:8000"),
        help="the running service (loopback only; default FDA_URL or http://127.0.0.1:8000)",
    )
    parser.add_argument(
        "--key", default=os.environ.get("FDA_API_KEY", ""), help=f"{key_help} (default FDA_API_KEY; else one is made and revoked after)"
    )
    parser.add_argument(
        "--start", "--start-stack", dest="start", action="store_true", help="start a stack of its own (devstack) and stop it after"
    )
    add_stack_flags(parser)


def check_service_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """A running service only on loopback: a bench loads, and may steer, what it talks to."""
    if not args.start and urlsplit(args.url).hostname not in LOOPBACK:
        parser.error("--url must be a loopback address")


@dataclass
class Service:
    """The service a bench drives: its base URL, the environment `manage.py` needs to reach it,
    an API key, and its own stack if it started one. Set ``failed`` to keep the stack's var dir
    and show its log at the end (an exception does it too)."""

    base: str = ""
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    key: str = ""
    stack: OwnStack | None = None
    key_prefix: str | None = None  # a key made on a running service, revoked at the end
    failed: bool = False


@contextmanager
def service(
    args: argparse.Namespace, *, key_name: str, prefix: str, operator: bool = False, extra_env: dict[str, str] | None = None
) -> Iterator[Service]:
    """The service of add_service_flags' flags, with a key: a running one at --url, or with
    --start a stack of its own (``prefix`` names it; ``extra_env`` set on it). The key is --key,
    else one made (`create_api_key KEY_NAME`, ``operator``: with --operator). On the way out,
    whatever happened: a key made on a running service is revoked, an own stack is stopped and
    cleaned up (BenchFailed when that meets a problem and nothing else failed)."""
    svc = Service()
    try:
        if args.start:
            svc.stack = OwnStack(prefix, embedded=args.embedded, extra_env=extra_env)
            say("stack: starting `python -m devstack up` ...")
            started = time.monotonic()
            svc.stack.start()
            svc.stack.ready(args.ready_timeout)
            say(f"stack: ready in {time.monotonic() - started:.0f} s: {svc.stack.description}")
            svc.env, svc.base = svc.stack.service_env, svc.stack.base
        else:
            svc.base = args.url.rstrip("/")
        # An own stack's database is its own: a key of the caller's is not in it.
        svc.key = args.key if svc.stack is None else ""
        if not svc.key:
            svc.key, prefix_made = api_key_create(svc.env, key_name, *(("--operator",) if operator else ()))
            svc.key_prefix = prefix_made if svc.stack is None else None  # an own stack's goes with its database
        yield svc
    except BaseException:
        svc.failed = True
        raise
    finally:
        api_key_revoke(svc.env, svc.key_prefix)
        if svc.stack is not None:
            problems = svc.stack.close(keep=args.keep or svc.failed)
            for problem in problems:
                say(f"stack: {problem}")
            if svc.failed or problems:
                say("stack: last lines of its output:\n" + svc.stack.log_tail(40))
            if problems and not svc.failed:
                raise BenchFailed("the stack was not cleaned up (above)")
