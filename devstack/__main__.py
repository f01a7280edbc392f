"""The local runner behind `make up` / `make down`.

up:   read env.env (the environment wins), fall back to embedded stand-ins for PostgreSQL, RabbitMQ
      and Redis when they do not answer, start the bundled S3 server if none answers, migrate,
      create the bucket, then run the Procfile (API and worker) under honcho until Ctrl-C.
down: stop what `up` started.
"""

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from devstack.net import answers

ROOT = Path(__file__).resolve().parent.parent
VAR = ROOT / "var"
PIDFILE = VAR / "run" / "devstack.pid"

def load_env() -> None:
    import environ

    environ.Env.read_env(str(ROOT / "env.env"))  # never overwrites what is already set


def embedded_fallbacks(env: dict[str, str]) -> dict[str, str]:
    """The variables to override so the service runs on a machine with only Python.

    Each networked dependency that does not answer is replaced: PostgreSQL by SQLite, RabbitMQ by
    Kombu's filesystem transport, Redis by Celery's file result backend.
    """
    overrides = {}
    if env["DATABASE_URL"].startswith("postgres") and not answers(env["DATABASE_URL"]):
        overrides["DATABASE_URL"] = f"sqlite:///{VAR / 'db.sqlite3'}"
    if env["CELERY_BROKER_URL"].startswith("amqp") and not answers(env["CELERY_BROKER_URL"]):
        overrides["CELERY_BROKER_URL"] = "filesystem://"
        overrides["CELERY_BROKER_FOLDER"] = str(VAR / "broker")
    if env["CELERY_RESULT_BACKEND"].startswith("redis") and not answers(env["CELERY_RESULT_BACKEND"]):
        (VAR / "results").mkdir(parents=True, exist_ok=True)
        overrides["CELERY_RESULT_BACKEND"] = f"file://{VAR / 'results'}"
    if env.get("CACHE_URL", "").startswith("redis") and not answers(env["CACHE_URL"]):
        # Rate limits then count per web process instead of across them.
        overrides["CACHE_URL"] = "locmem://"
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


def manage(*args: str) -> None:
    subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, check=True)


def up() -> int:
    load_env()
    overrides = embedded_fallbacks(dict(os.environ))
    if overrides:
        replaced = [name for name in ("DATABASE_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "CACHE_URL") if name in overrides]
        print(f"devstack: {', '.join(replaced)} not answering; using embedded defaults under var/ (SQLite, filesystem broker, file results, in-memory cache)")
    os.environ.update(overrides)
    # The Procfile's commands (gunicorn, celery) live next to this interpreter, in the venv.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    if os.environ["DATABASE_URL"].startswith("postgres"):
        ensure_postgres_database(os.environ["DATABASE_URL"])

    PIDFILE.parent.mkdir(parents=True, exist_ok=True)
    PIDFILE.write_text(str(os.getpid()))
    s3 = None
    if not answers(os.environ["S3_ENDPOINT"]):
        from devstack.seaweed import SeaweedS3

        host, _, port = os.environ["S3_ENDPOINT"].rpartition(":")
        s3 = SeaweedS3(
            data_dir=VAR / "s3",
            access_key=os.environ["S3_ACCESS_KEY"],
            secret_key=os.environ["S3_SECRET_KEY"],
            s3_port=int(port),
            host=host,
        )
        print(f"devstack: starting the bundled S3 server on {s3.endpoint} (data in var/s3)")
        s3.start()

    honcho = None
    stopping = False

    def stop(signum, frame):
        nonlocal stopping
        stopping = True
        if honcho is not None and honcho.poll() is None:
            honcho.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        manage("migrate", "--noinput")
        manage("storage_init")
        manage("detector_register", "--bootstrap")
        manage("collectstatic", "--noinput", "--verbosity", "0")
        if not stopping:
            print(f"devstack: API on http://{os.environ.get('API_BIND', '127.0.0.1:8000')}/ (docs at /api/docs/); "
                  "Ctrl-C or `make down` stops. A key: .venv/bin/python manage.py create_api_key NAME")
            honcho = subprocess.Popen([str(Path(sys.executable).parent / "honcho"), "start", "-f", "Procfile"], cwd=ROOT)
            while honcho.poll() is None:
                time.sleep(0.5)
        return 0
    finally:
        if s3 is not None:
            s3.stop()
        PIDFILE.unlink(missing_ok=True)
        print("devstack: stopped")


def down() -> int:
    try:
        pid = int(PIDFILE.read_text())
    except (FileNotFoundError, ValueError):
        print("devstack: nothing running")
        return 0
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        PIDFILE.unlink(missing_ok=True)
        print("devstack: nothing running")
        return 0
    for _ in range(60):
        if not PIDFILE.exists():
            break
        time.sleep(0.5)
    print("devstack: stopped")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack")
    parser.add_argument("command", choices=["up", "down"])
    args = parser.parse_args()
    return up() if args.command == "up" else down()


if __name__ == "__main__":
    sys.exit(main())
