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
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from devstack.net import answers
from devstack.runner import (
    ROOT,
    AlreadyRunning,
    embedded_fallbacks,
    ensure_postgres_database,
    load_env,
    manage,
    metrics_dir_reset,
    pid_alive,
    pidfile,
    pidfile_claim,
    pidfile_release,
    read_pid,
    var_dir,
)


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
            print(
                f"devstack: {', '.join(replaced)} not answering; using embedded defaults under {var} "
                "(SQLite, filesystem broker, file results, in-memory cache)"
            )
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
        print(
            f"devstack: API on http://{os.environ.get('API_BIND', '127.0.0.1:8000')}/ (docs at /api/docs/); "
            "Ctrl-C or `make down` stops. A key: .venv/bin/python manage.py create_api_key NAME"
        )
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
