"""The local runner's parts that others import (the tests, devstack/smoke.py, bench/): its state
directory and pid file (one stack per var dir), its configuration (env.env, and the embedded
stand-ins for the services that do not answer), and the steps `python -m devstack up` runs.

No Django here: env.env is read by django-environ, which needs no settings.
"""

import fcntl
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from devstack.net import answers

ROOT = Path(__file__).resolve().parent.parent


def var_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where the runner keeps its state: FDA_VAR_DIR (of ``env``, default the process
    environment), or var/ at the repository root."""
    env = os.environ if env is None else env
    return Path(env.get("FDA_VAR_DIR") or ROOT / "var").absolute()


def pidfile() -> Path:
    return var_dir() / "run" / "devstack.pid"


# --- The pid file: one stack per var dir --------------------------------------------------------


class AlreadyRunning(Exception):
    def __init__(self, pid: int) -> None:
        super().__init__(f"already running, pid {pid}")
        self.pid = pid


def pid_alive(pid: int) -> bool:
    """True when a process with this pid exists (and is not a zombie)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


@contextmanager
def _pidfile_locked(path: Path):
    """An exclusive flock on a lock file beside the pid file (never removed, so every claimant
    locks the same inode): claims and releases run one at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def pidfile_claim(path: Path, pid: int | None = None) -> None:
    """Write ``pid`` (default: this process) into the pid file, or raise AlreadyRunning when it
    names a live process. A file naming a process that is gone (stale) is taken over. Atomic:
    of two simultaneous claims exactly one wins, and the file is never seen half written."""
    pid = pid or os.getpid()
    with _pidfile_locked(path):
        holder = read_pid(path)
        if holder is not None and holder != pid and pid_alive(holder):
            raise AlreadyRunning(holder)
        tmp = path.with_name(f"{path.name}.{pid}.tmp")
        tmp.write_text(f"{pid}\n")
        os.replace(tmp, path)


def pidfile_release(path: Path, pid: int | None = None) -> bool:
    """Remove the pid file if it still names ``pid`` (default: this process): only the process
    that wrote it removes it. True when removed."""
    pid = pid or os.getpid()
    with _pidfile_locked(path):
        if read_pid(path) != pid:
            return False
        path.unlink()
        return True


# --- Configuration --------------------------------------------------------------------------------


def load_env() -> None:
    import environ

    environ.Env.read_env(str(ROOT / "env.env"))  # never overwrites what is already set


def embedded_fallbacks(env: dict[str, str]) -> dict[str, str]:
    """The variables to override so the service runs on a machine with only Python.

    Each networked dependency that does not answer is replaced: PostgreSQL by SQLite, RabbitMQ by
    Kombu's filesystem transport, Redis by Celery's file result backend.
    """
    var = var_dir(env)
    overrides = {}
    if env["DATABASE_URL"].startswith("postgres") and not answers(env["DATABASE_URL"]):
        overrides["DATABASE_URL"] = f"sqlite:///{var / 'db.sqlite3'}"
    if env["CELERY_BROKER_URL"].startswith("amqp") and not answers(env["CELERY_BROKER_URL"]):
        overrides["CELERY_BROKER_URL"] = "filesystem://"
        overrides["CELERY_BROKER_FOLDER"] = str(var / "broker")
    if env["CELERY_RESULT_BACKEND"].startswith("redis") and not answers(env["CELERY_RESULT_BACKEND"]):
        (var / "results").mkdir(parents=True, exist_ok=True)
        overrides["CELERY_RESULT_BACKEND"] = f"file://{var / 'results'}"
    if env.get("CACHE_URL", "").startswith("redis") and not answers(env["CACHE_URL"]):
        # Rate limits then count per web process instead of across them.
        overrides["CACHE_URL"] = "locmemcache://"  # django-environ's name for LocMemCache
    return overrides


def ensure_postgres_database(url: str) -> None:
    """Create the database named in DATABASE_URL if the server lacks it."""
    import psycopg2
    from psycopg2 import sql

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    params = {"host": parts.hostname, "port": parts.port or 5432, "user": parts.username, "password": parts.password}
    try:
        psycopg2.connect(dbname=name, **params).close()
        return
    except psycopg2.OperationalError as exc:
        if "does not exist" not in str(exc):
            raise
    conn = psycopg2.connect(dbname="postgres", **params)
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    conn.close()
    print(f"devstack: created database {name}")


def metrics_dir_reset(var: Path) -> Path:
    """<var>/metrics, emptied (Prometheus multi-process files of an earlier run)."""
    path = var / "metrics"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def manage(*args: str) -> None:
    subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, check=True)
