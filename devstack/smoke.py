"""The fallback smoke: `make up` with PostgreSQL, RabbitMQ and Redis all absent, one real photo.

    .venv/bin/python -m devstack.smoke          (or: make smoke)

Points DATABASE_URL, CELERY_BROKER_URL, CELERY_RESULT_BACKEND and CACHE_URL at a loopback port
that refuses connections, so `python -m devstack up` must fall back to its embedded stand-ins
(SQLite, Kombu's filesystem broker, the file result backend, the in-process cache). The stack
runs in a temporary var dir (FDA_VAR_DIR) on free ports, with its own bucket and queues, so it
never touches a developer's var/ or a running `make up`. Then: wait for /readyz, create an API
key, upload tests/data/photos/grace_hopper_1face.jpg, poll the job until it is completed with its
annotated image stored, and check one face, found by the default detector version (DETECTOR_MODEL
empty, as env.env ships it). The stack is always stopped; any failure exits 1.
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from devstack.runner import ROOT, embedded_fallbacks
from devstack.stack import SERVICES, Stack, StackFailed, free_port, refusing_port, stack_env, wait_ready

PHOTO = ROOT / "tests" / "data" / "photos" / "grace_hopper_1face.jpg"


class SmokeFailed(Exception):
    """A check of the smoke failed."""


def default_version_id() -> str:
    """The version a fresh database gets on the CPU: the shipped file with the lowest
    default_rank (registry.services.detector_version_default; this machine has every engine)."""
    ranked = []
    for path in (ROOT / "detector_versions").glob("*.json"):
        data = json.loads(path.read_text())
        if "default_rank" in data:
            ranked.append((data["default_rank"], f"{data['name']}@{data['version']}"))
    if not ranked:
        raise SmokeFailed("no file in detector_versions/ has a default_rank")
    return min(ranked)[1]


def create_api_key(env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", "create_api_key", "smoke"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0 or not done.stdout.strip():
        raise SmokeFailed(f"create_api_key exited with {done.returncode}: {done.stderr[-1000:]}")
    return done.stdout.strip().splitlines()[-1]


def run_job(stack: Stack, base: str, key: str, photo: Path, timeout: float) -> dict:
    headers = {"X-API-Key": key}
    with open(photo, "rb") as fh:
        response = requests.post(
            f"{base}/api/v1/images/",
            headers=headers,
            data={"request_id": f"smoke-{time.time_ns()}"},
            files={"image": (photo.name, fh, "image/jpeg")},
            timeout=30,
        )
    if response.status_code != 202:
        raise SmokeFailed(f"upload answered {response.status_code}: {response.text[:500]}")
    image_id = response.json()["id"]
    deadline = time.monotonic() + timeout
    body: dict = {}
    while time.monotonic() < deadline:
        stack.check_alive()
        body = requests.get(f"{base}/api/v1/images/{image_id}/", headers=headers, timeout=10).json()
        if body["status"] == "failed":
            raise SmokeFailed(f"job {image_id} failed: {body['error']}")
        # Completed, and the deliverer has stored the annotated image.
        if body["status"] == "completed" and body["output_image_url"]:
            break
        time.sleep(1)
    else:
        raise SmokeFailed(f"job {image_id} not completed within {timeout:.0f} s (last status {body.get('status')!r})")
    if body["face_count"] != 1:
        raise SmokeFailed(f"job {image_id}: face_count {body['face_count']}, expected 1")
    annotated = requests.get(f"{base}/api/v1/images/{image_id}/annotated/", headers=headers, timeout=30)
    if annotated.status_code != 200 or not annotated.content.startswith(b"\xff\xd8"):
        raise SmokeFailed(f"annotated image: {annotated.status_code} {annotated.headers.get('Content-Type')}")
    return body


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.smoke", description=__doc__.split("\n\n")[0])
    parser.add_argument("--photo", type=Path, default=PHOTO, help="a photo with exactly one face")
    parser.add_argument("--ready-timeout", type=float, default=180)
    parser.add_argument("--job-timeout", type=float, default=240)
    parser.add_argument("--keep", action="store_true", help="keep the temporary var dir (kept anyway on failure)")
    args = parser.parse_args()

    started = time.monotonic()
    var = Path(tempfile.mkdtemp(prefix="fda-smoke-"))
    dead = refusing_port()
    api_port = free_port()
    env = stack_env(var, api_port, prefix="fda-smoke", dead_port=dead.getsockname()[1])
    # What a fresh `make up` serves as shipped, whatever the developer's shell chose.
    env["DETECTOR_MODEL"] = ""
    base = f"http://127.0.0.1:{api_port}"
    stack = None
    ok = False
    try:
        if not args.photo.is_file():
            raise SmokeFailed(f"no photo at {args.photo}")
        stack = Stack(env, var / "devstack.log")
        wait_ready(stack, base, args.ready_timeout)
        ready_s = time.monotonic() - started
        log = stack.log()
        if "using embedded defaults" not in log or not all(name in log for name in SERVICES):
            raise SmokeFailed("`devstack up` did not report falling back for all four services")
        # The same environment `up` gave its children: the embedded stand-ins in this var dir.
        key = create_api_key({**env, **embedded_fallbacks(env)})
        job_started = time.monotonic()
        body = run_job(stack, base, key, args.photo, args.job_timeout)
        job_s = time.monotonic() - job_started
        expected = default_version_id()
        if not body["model_version"].startswith(f"{expected}+"):
            raise SmokeFailed(f"a fresh database served {body['model_version']}, not the default {expected}")
        ok = True
    except (SmokeFailed, StackFailed) as exc:
        print(f"smoke: FAILED: {exc}", file=sys.stderr)
    except Exception as exc:  # noqa: BLE001 - an unexpected answer, a network error: a failure all the same
        print(f"smoke: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
    finally:
        rc = stack.stop() if stack is not None else 0
        dead.close()
    if ok and rc != 0:
        ok = False
        print(f"smoke: FAILED: `devstack up` did not stop cleanly on SIGTERM (exit {rc})", file=sys.stderr)
    if not ok:
        if stack is not None:
            print("smoke: last lines of the stack's output:\n" + "\n".join(stack.log().splitlines()[-60:]), file=sys.stderr)
        print(f"smoke: state kept in {var}", file=sys.stderr)
        return 1
    if not args.keep:
        shutil.rmtree(var, ignore_errors=True)
    print(
        f"smoke: ok: make up on the embedded stand-ins (SQLite, filesystem broker, file results, locmem cache): "
        f"{body['face_count']} face in {args.photo.name} ({body['model_version']}), ready in {ready_s:.0f} s, "
        f"job done in {job_s:.0f} s, {time.monotonic() - started:.0f} s in all"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
