"""`python -m devstack up` as a child process on free ports, in a var dir of its own: what the
fallback smoke (devstack/smoke.py) and the benchmarks' own stacks (bench/harness.py) run.

    env = stack_env(var, api_port, prefix="fda-smoke", dead_port=dead.getsockname()[1])
    stack = Stack(env, var / "devstack.log")
    wait_ready(stack, f"http://127.0.0.1:{api_port}", timeout=180)
    ...
    stack.stop()
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from devstack.net import isolated_env
from devstack.runner import ROOT

# The services `devstack up` replaces with embedded stand-ins when they do not answer.
SERVICES = ("DATABASE_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "CACHE_URL")


class StackFailed(Exception):
    """The stack died, or did not get ready in time."""


def refusing_port() -> socket.socket:
    """A loopback port that is bound but not listening: connections to it are refused, and no
    other process can take it while the socket is open."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def dead_services(port: int) -> dict[str, str]:
    """Every service of SERVICES pointed at ``port`` (a refusing_port()): `devstack up` then falls
    back to its embedded stand-ins for all of them."""
    return {
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:{port}/face_detect_api",
        "CELERY_BROKER_URL": f"amqp://guest:guest@127.0.0.1:{port}//",
        "CELERY_RESULT_BACKEND": f"redis://127.0.0.1:{port}/0",
        "CACHE_URL": f"redis://127.0.0.1:{port}/1",
    }


def stack_env(var: Path, api_port: int, *, prefix: str, dead_port: int | None = None) -> dict[str, str]:
    """This process's environment for a stack of its own: var dir ``var``, the API on
    ``api_port``, its own S3 ports, bucket and queues (named after ``prefix``), the detector on the
    CPU; with ``dead_port``, the embedded stand-ins for every service (dead_services)."""
    # Not this process's Django settings, run id or metrics directory: `devstack up` sets its own.
    skip = ("DJANGO_SETTINGS_MODULE", "FDA_RUN", "PROMETHEUS_MULTIPROC_DIR")
    env = {k: v for k, v in os.environ.items() if k not in skip}
    env.update(isolated_env(prefix))
    env.update(
        FDA_VAR_DIR=str(var),
        API_BIND=f"127.0.0.1:{api_port}",
        PUBLIC_BASE_URL=f"http://127.0.0.1:{api_port}",
        DETECTOR_DEVICE="cpu",
        PYTHONUNBUFFERED="1",
    )
    if dead_port is not None:
        env.update(dead_services(dead_port))
    return env


class Stack:
    """`python -m devstack up` as a subprocess, its output in a log file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        with open(log_path, "ab") as log:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(
                [sys.executable, "-m", "devstack", "up"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise StackFailed(f"`devstack up` exited with {self.process.returncode}")

    def stop(self, timeout: float = 90) -> int | None:
        """SIGTERM (what `make down` sends), then SIGKILL to its process group past the timeout."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.process.wait()
                return None
        return self.process.returncode


def wait_ready(stack: Stack, base: str, timeout: float) -> None:
    """Wait until ``base``/readyz answers 200; StackFailed when the stack dies or the time is up."""
    deadline, last = time.monotonic() + timeout, "no answer"
    while time.monotonic() < deadline:
        stack.check_alive()
        try:
            response = requests.get(f"{base}/readyz", timeout=5)
            if response.status_code == 200:
                return
            last = f"{response.status_code} {response.text[:300]}"
        except requests.RequestException as exc:
            last = f"{type(exc).__name__}"
        time.sleep(0.5)
    raise StackFailed(f"/readyz not 200 within {timeout:.0f} s: {last}")
