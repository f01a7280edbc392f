"""The local runner behind `make up` / `make down`.

up:   refuse if a stack is already running (its pid in var/run/devstack.pid), read env.env (the
      environment wins), fall back to embedded stand-ins for PostgreSQL, RabbitMQ and Redis when
      they do not answer, start the bundled S3 server if none answers, migrate, create the
      bucket, then run the Procfile (API and worker) under honcho until Ctrl-C.
down: stop what `up` started.

State lives under var/ at the repository root, or under FDA_VAR_DIR when set (the fallback smoke,
devstack/smoke.py, runs a second stack there without touching a developer's var/).
"""

import argparse
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
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
    params = dict(host=parts.hostname, port=parts.port or 5432, user=parts.username, password=parts.password)
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


def up() -> int:
    stopping = False
    honcho = None

    def stop(signum, frame):
        nonlocal stopping
        stopping = True
        if honcho is not None and honcho.poll() is None:
            honcho.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    load_env()
    var = var_dir()
    pid_path = pidfile()
    # First, before anything is touched: a second `make up` must leave the first one's state alone.
    try:
        pidfile_claim(pid_path)
    except AlreadyRunning as exc:
        print(f"devstack: already running, pid {exc.pid}; `make down` first", file=sys.stderr)
        return 1
    s3 = None
    try:
        # Children (the Procfile's commands) see the same var dir.
        os.environ["FDA_VAR_DIR"] = str(var)
        overrides = embedded_fallbacks(dict(os.environ))
        if overrides:
            replaced = [name for name in ("DATABASE_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "CACHE_URL") if name in overrides]
            print(f"devstack: {', '.join(replaced)} not answering; using embedded defaults under {var} (SQLite, filesystem broker, file results, in-memory cache)")
        os.environ.update(overrides)
        # One metrics directory for the API's and the workers' processes, so that GET /metrics
        # shows them all; emptied, since counters left by an earlier run would be counted again.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir_reset(var))
        # The Procfile's commands (gunicorn, celery) live next to this interpreter, in the venv.
        os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        if os.environ["DATABASE_URL"].startswith("postgres"):
            ensure_postgres_database(os.environ["DATABASE_URL"])

        if not answers(os.environ["S3_ENDPOINT"]):
            from devstack.seaweed import SeaweedS3

            host, _, port = os.environ["S3_ENDPOINT"].rpartition(":")
            s3 = SeaweedS3(
                data_dir=var / "s3",
                access_key=os.environ["S3_ACCESS_KEY"],
                secret_key=os.environ["S3_SECRET_KEY"],
                s3_port=int(port),
                host=host,
            )
            print(f"devstack: starting the bundled S3 server on {s3.endpoint} (data in {var / 's3'})")
            s3.start()

        manage("migrate", "--noinput")
        manage("storage_init")
        manage("broker_migrate")
        manage("detector_register", "--bootstrap")
        manage("collectstatic", "--noinput", "--verbosity", "0")
        if stopping:
            return 0
        print(f"devstack: API on http://{os.environ.get('API_BIND', '127.0.0.1:8000')}/ (docs at /api/docs/); "
              "Ctrl-C or `make down` stops. A key: .venv/bin/python manage.py create_api_key NAME")
        honcho = subprocess.Popen([str(Path(sys.executable).parent / "honcho"), "start", "-f", "Procfile"], cwd=ROOT)
        while honcho.poll() is None:
            time.sleep(0.5)
        # Stopped on request: success. Otherwise a process died (e.g. the API port was taken).
        return 0 if stopping else honcho.returncode
    finally:
        if s3 is not None:
            s3.stop()
        pidfile_release(pid_path)
        print("devstack: stopped")


def down(timeout: float = 60.0) -> int:
    pid = read_pid(pidfile())
    if pid is None or not pid_alive(pid):
        # A file naming a process that is gone is left to the next `up`, which takes it over.
        print("devstack: nothing running")
        return 0
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        print("devstack: nothing running")
        return 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid) or read_pid(pidfile()) != pid:
            print("devstack: stopped")
            return 0
        time.sleep(0.25)
    print(f"devstack: pid {pid} still running {timeout:.0f} s after SIGTERM", file=sys.stderr)
    return 1


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack")
    parser.add_argument("command", choices=["up", "down"])
    args = parser.parse_args()
    return up() if args.command == "up" else down()


if __name__ == "__main__":
    sys.exit(main())
