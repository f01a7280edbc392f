"""The front door: POST /api/v1/images/ -> 202, uploads/s and latency at 1, 4, 16 and 64 clients.

    python bench/submit.py --key fda_...                          # a service already running (make up)
    FDA_API_KEY=fda_... python bench/submit.py --uploads 1000 --levels 32
    python bench/submit.py --pause-detection --wait               # workers idle while measured; then drained
    python bench/submit.py --start                                # a stack of its own, stopped after

It drives a RUNNING service at --url (default FDA_URL, else http://127.0.0.1:8000; loopback only)
and starts nothing itself. The key comes from --key or FDA_API_KEY; without either it makes one
with `manage.py create_api_key bench-submit` (this process's environment must be the service's,
as for `make up` from this checkout) and revokes it at the end. Rate limits count uploads per
key: run the service with them off (`API_RATE_LIMIT= API_UPLOAD_RATE_LIMIT= make up`), or the
429s are counted as what they are, non-202 answers.

Each level sends --uploads POSTs of one real JPEG (default tests/data/photos/grace_hopper_1face.jpg,
512x600, 60 KiB) with a new request_id each, from that many client threads at once, each with a
keep-alive connection of its own (http.client: the multipart body is built once, so that the
client spends as little of the machine's CPU as it can). Per level it prints uploads/s (202s from
the first request to the last answer), the p50, p95 and max latency of POST -> answer, and the
count of answers other than 202 (and of connection errors), and the CPU milliseconds per upload
this client spent itself (it shares the machine with the service). When it finds the stack's processes
(the pid in its var dir's run/devstack.pid, as `make up` writes it, or its own with --start) it
also prints the CPU milliseconds the stack spent per upload (its processes: gunicorn, the S3
server, the Celery workers; and the PostgreSQL backends of its database; not RabbitMQ's or
Redis's, shared services) and the share of the machine that other processes took meanwhile: on
a shared machine uploads/s alone says little (bench/metrics_overhead.py's CpuWindow). A second
line splits it by part and adds the broker's and Redis's CPU (all of it: on a machine where
nothing else uses them, what the uploads cost them) for the whole stack's CPU per upload.

--profile N then sends N more uploads through the API's own code (Django's WSGI handler) in the
bench's process, under cProfile, and prints the functions that took the most.

--parts N measures, in the bench's process and without a profiler, the CPU of an upload through
Django's WSGI handler, of the submission service alone (no middleware, DRF or multipart parsing)
and of the parts any upload route needs (the image check, the S3 client's put, the repeat check,
a statement's round trip; the ORM's exists() for scale), N runs each, in turns: what Django and
DRF cost and what an upload cannot cost less than.

By default the detection workers run meanwhile and detect the uploads as they arrive (the
"busy" figures: on a small machine they share the CPUs with the API). --pause-detection asks
the detection workers (Celery remote control, over the broker) to stop consuming the detect
queue while measuring and to resume after (the "idle" figures); if the bench is killed between
the two, `celery -A face_detect_api control add_consumer <detect queue>` resumes them by hand.
--wait then waits until every accepted job is finished and prints how many completed, failed and
were lost (not finished within --wait-timeout).

--start runs `python -m devstack up` (bench/harness.py's OwnStack: a temporary var dir, free
ports, its own bucket, queues and PostgreSQL database, all removed after; --embedded for the
embedded stand-ins), with the rate limits off, and stops it at the end.

Prints figures; asserts nothing. Exit status 1 only when the bench itself could not run.
"""

import argparse
import http.client
import json
import os
import statistics
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as `python bench/submit.py`

from bench import harness
from bench.cpu import CpuWindow
from bench.harness import CONTENT_TYPES, NO_LIMITS, PHOTOS, TERMINAL, Api, BenchFailed, percentile, say
from devstack.runner import pid_alive, pidfile, read_pid

PHOTO = PHOTOS / "grace_hopper_1face.jpg"
KEY_NAME = "bench-submit"


# --- One upload, over a keep-alive connection ---------------------------------------------------


class Upload:
    """The multipart body of one photo with a request_id, built once: only the id changes."""

    BOUNDARY = "fda-bench-submit-boundary-7c1f"

    def __init__(self, photo: Path) -> None:
        self.photo = photo
        data = photo.read_bytes()
        b = self.BOUNDARY
        self.head = f'--{b}\r\nContent-Disposition: form-data; name="request_id"\r\n\r\n'.encode()
        self.tail = (
            (
                f'\r\n--{b}\r\nContent-Disposition: form-data; name="image"; filename="{photo.name}"\r\n'
                f"Content-Type: {CONTENT_TYPES.get(photo.suffix.lower(), 'application/octet-stream')}\r\n\r\n"
            ).encode()
            + data
            + f"\r\n--{b}--\r\n".encode()
        )
        self.content_type = f"multipart/form-data; boundary={b}"
        self.size = len(data)

    def body(self, request_id: str) -> bytes:
        return self.head + request_id.encode() + self.tail


class Client:
    """One client: a keep-alive HTTP connection of its own (reopened when the server closes it)."""

    def __init__(self, base: str, key: str) -> None:
        parts = urlsplit(base)
        self.host, self.port = parts.hostname, parts.port or 80
        self.headers = {"X-API-Key": key}
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)

    def post(self, upload: Upload, request_id: str) -> tuple[int, float, str | None]:
        """(status, seconds, job id): status 0 for a connection error."""
        body = upload.body(request_id)
        headers = {**self.headers, "Content-Type": upload.content_type, "Content-Length": str(len(body))}
        started = time.perf_counter()
        try:
            self.conn.request("POST", "/api/v1/images/", body=body, headers=headers)
            response = self.conn.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()  # reopened by the next request
            return 0, time.perf_counter() - started, None
        elapsed = time.perf_counter() - started
        job_id = None
        if response.status == 202:
            try:
                job_id = json.loads(payload)["id"]
            except (ValueError, KeyError):
                pass
        return response.status, elapsed, job_id

    def close(self) -> None:
        self.conn.close()


def running_stack(env: dict[str, str]) -> tuple[int, str | None] | None:
    """The running `make up` of this checkout (its pid file): its root pid and its PostgreSQL
    database's name (None on SQLite); None when none runs."""
    pid = read_pid(pidfile())
    if pid is None or not pid_alive(pid):
        return None
    url = urlsplit(env.get("DATABASE_URL", ""))
    return pid, url.path.lstrip("/") if url.scheme.startswith("postgres") else None


def level(base: str, key: str, upload: Upload, *, clients: int, count: int, tag: str, stack: tuple[int, str | None] | None = None) -> dict:
    """``count`` uploads from ``clients`` threads at once, each taking the next upload until none
    is left. Returns the figures and the accepted job ids."""
    lock = threading.Lock()
    next_n = iter(range(count))
    results: list[tuple[int, float, str | None]] = []
    gate = threading.Barrier(clients + 1)

    def run() -> None:
        client = Client(base, key)
        mine = []
        gate.wait()
        while True:
            with lock:
                n = next(next_n, None)
            if n is None:
                break
            mine.append(client.post(upload, f"{tag}-{n}"))
        client.close()
        with lock:
            results.extend(mine)

    threads = [threading.Thread(target=run, name=f"client-{i}", daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    window = CpuWindow(*stack) if stack is not None else None
    own_cpu = time.process_time()
    gate.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    own_cpu = time.process_time() - own_cpu
    cpu_s, others = window.close() if window is not None else (float("nan"), float("nan"))
    by_part = {part: seconds * 1000 / max(len(results), 1) for part, seconds in window.by_part.items()} if window is not None else {}
    latencies = [elapsed for status, elapsed, _ in results if status == 202]
    codes: dict[int, int] = {}
    for status, _, _ in results:
        if status != 202:
            codes[status] = codes.get(status, 0) + 1
    return {
        "clients": clients,
        "count": len(results),
        "accepted": len(latencies),
        "seconds": seconds,
        "rate": len(latencies) / seconds if seconds else 0.0,
        "p50": statistics.median(latencies) * 1000 if latencies else float("nan"),
        "p95": percentile(latencies, 95) * 1000 if latencies else float("nan"),
        "max": max(latencies) * 1000 if latencies else float("nan"),
        "others": codes,
        "cpu_ms": cpu_s * 1000 / max(len(results), 1),
        "others_share": others,
        "client_ms": own_cpu * 1000 / max(len(results), 1),
        "by_part": by_part,
        "ids": [job_id for status, _, job_id in results if job_id],
    }


def level_line(figures: dict) -> str:
    others = sum(figures["others"].values())
    detail = ", ".join(f"{code or 'conn. error'}: {n}" for code, n in sorted(figures["others"].items())) if others else ""
    return (
        f"{figures['clients']:>7} {figures['count']:>7} {figures['rate']:>9.1f} {figures['p50']:>8.1f} "
        f"{figures['p95']:>8.1f} {figures['max']:>8.1f} {others:>8} {figures['cpu_ms']:>11.1f} "
        f"{figures['client_ms']:>11.1f} {figures['others_share'] * 100:>9.0f}" + (f"  ({detail})" if detail else "")
    )


def parts_line(by_part: dict[str, float]) -> str:
    """The stack's CPU per upload by part, and the shared broker's and Redis's (all their work)."""
    shown = ", ".join(f"{part} {ms:.1f}" for part, ms in by_part.items() if ms >= 0.05)
    whole = sum(by_part.values())
    return f"        CPU ms per upload: {shown}; whole stack with the shared broker and Redis {whole:.1f}"


# --- Detection paused (Celery remote control) and the wait for the jobs ----------------------------


class DetectionPause:
    """Tells the detection workers to stop consuming the detect queue, and to start again."""

    def __init__(self, env: dict[str, str]) -> None:
        # The Celery app reads the Django settings, which read this process's environment.
        os.environ.update({k: v for k, v in env.items() if k != "DJANGO_SETTINGS_MODULE"})
        os.environ["DJANGO_SETTINGS_MODULE"] = "face_detect_api.settings"
        from face_detect_api.celery import app

        self.app = app
        self.queue = app.conf.task_default_queue
        self.workers: list[str] = []

    def pause(self, patience: float = 120) -> None:
        # Only the workers that consume it: add_consumer would make any other one a detector. A
        # detection worker loads its model before it consumes: one just started is waited for.
        deadline = time.monotonic() + patience
        while True:
            with self.app.connection_for_write() as conn:
                queues = self.app.control.inspect(timeout=5, connection=conn).active_queues() or {}
            consumers = sorted(name for name, active in queues.items() if any(q["name"] == self.queue for q in active))
            if consumers:
                break
            if time.monotonic() > deadline:
                raise BenchFailed(f"no worker consumes {self.queue!r} (workers: {sorted(queues)})")
            time.sleep(2)
        with self.app.connection_for_write() as conn:
            replies = self.app.control.cancel_consumer(self.queue, destination=consumers, reply=True, timeout=5, connection=conn)
        self.workers = [name for reply in replies for name, answer in reply.items() if "ok" in answer]
        if not self.workers:
            raise BenchFailed(f"no worker stopped consuming {self.queue!r} (replies: {replies})")
        say(f"detection paused: {', '.join(self.workers)} stopped consuming {self.queue!r}")

    def resume(self) -> None:
        if self.workers:
            # A connection of its own: one left idle while measuring may have been dropped by the broker.
            with self.app.connection_for_write() as conn:
                self.app.control.add_consumer(self.queue, destination=self.workers, reply=True, timeout=5, connection=conn)
            say(f"detection resumed: {', '.join(self.workers)} consume {self.queue!r} again")
            self.workers = []


def wait_finished(base: str, key: str, ids: list[str], timeout: float) -> dict[str, int]:
    """Poll the jobs until every one is completed or failed, or ``timeout`` passes."""
    local = threading.local()

    def status(job_id: str) -> str:
        if not hasattr(local, "api"):
            local.api = Api(base, key)
        return local.api.call("GET", f"/api/v1/images/{job_id}/").json()["status"]

    deadline = time.monotonic() + timeout
    states = {job_id: "queued" for job_id in ids}
    pending = list(ids)
    with ThreadPoolExecutor(4) as pool:
        while pending and time.monotonic() < deadline:
            # The jobs are detected about in order: wait for the last one, then read them all.
            if status(pending[-1]) not in TERMINAL:
                time.sleep(2)
                continue
            for job_id, state in zip(pending, pool.map(status, pending)):
                states[job_id] = state
            pending = [job_id for job_id in pending if states[job_id] not in TERMINAL]
    counts = {"completed": 0, "failed": 0, "lost": 0}
    for state in states.values():
        counts[state if state in TERMINAL else "lost"] += 1
    return counts


# --- The API's own code in process: under cProfile, and in parts -------------------------------


def _in_process(env: dict[str, str], key: str, upload: Upload):
    """Django set up in this process with the stack's settings (database, bucket, broker), and a
    function that sends one upload through its WSGI handler (gunicorn's HTTP parsing aside):
    ``post(request_id) -> (status, job id or None)``."""
    import io

    os.environ.update({k: v for k, v in env.items() if k != "DJANGO_SETTINGS_MODULE"})
    os.environ["DJANGO_SETTINGS_MODULE"] = "face_detect_api.settings"
    import django

    django.setup()
    import logging

    from django.core.handlers.wsgi import WSGIHandler

    logging.getLogger("access").setLevel(logging.WARNING)  # a line per upload would drown the figures

    handler = WSGIHandler()

    def post(request_id: str) -> tuple[int, str | None]:
        body = upload.body(request_id)
        answer: list[str] = []
        environ = {
            "REQUEST_METHOD": "POST",
            "PATH_INFO": "/api/v1/images/",
            "SCRIPT_NAME": "",
            "QUERY_STRING": "",
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "80",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1",
            "HTTP_HOST": "127.0.0.1",
            "HTTP_X_API_KEY": key,
            "CONTENT_TYPE": upload.content_type,
            "CONTENT_LENGTH": str(len(body)),
            "wsgi.input": io.BytesIO(body),
            "wsgi.url_scheme": "http",
            "wsgi.errors": sys.stderr,
        }
        chunks = handler(environ, lambda status, headers, exc_info=None: answer.append(status))
        payload = b"".join(chunks)
        if hasattr(chunks, "close"):
            chunks.close()
        status = int(answer[0].split()[0])
        return status, json.loads(payload)["id"] if status == 202 else None

    return post


def profile(env: dict[str, str], key: str, upload: Upload, *, count: int, top: int, tag: str) -> list[str]:
    """``count`` uploads through Django's WSGI handler in this process, under cProfile timed by
    CPU time: where the API's CPU goes per upload. Returns the accepted job ids."""
    import cProfile
    import io
    import pstats

    post = _in_process(env, key, upload)
    for n in range(min(20, count)):  # warm: imports, connections, caches
        post(f"{tag}-warm-{n}")
    profiler = cProfile.Profile(time.process_time)  # CPU, not the wall time spent waiting on the services
    statuses: dict[int, int] = {}
    ids = []
    cpu = time.process_time()
    profiler.enable()
    for n in range(count):
        status, job_id = post(f"{tag}-{n}")
        statuses[status] = statuses.get(status, 0) + 1
        if job_id:
            ids.append(job_id)
    profiler.disable()
    cpu = time.process_time() - cpu
    say(f"\nprofile: {count} uploads in this process, {cpu * 1000 / count:.1f} ms CPU each under cProfile (answers: {statuses})")
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top // 2)  # where the time is spent itself
    say(out.getvalue())
    return ids


def parts(env: dict[str, str], key: str, upload: Upload, *, count: int, tag: str) -> list[str]:
    """The API's CPU per upload in this process, without a profiler: the whole upload through
    Django's WSGI handler, the submission service alone (no request cycle: no middleware, DRF,
    multipart parsing or serializer), and the parts that any upload route needs, each alone
    (the image check, the S3 client's put, the repeat check, a statement's round trip; the
    ORM's exists() beside them, for scale). The difference between the first two is what Django
    and DRF cost; what the parts leave of the service is the INSERT, the routing, the publish
    and its record. Each figure is the calling thread's CPU (time.thread_time) over ``count``
    runs after 10 unmeasured ones, taken in turns. Returns the accepted job ids."""
    import io

    post = _in_process(env, key, upload)
    from django.db import connection

    from clients.services import api_key_check
    from core import statecache
    from jobs.imaging import image_probe
    from jobs.models import Image
    from jobs.services import image_job_create, submission
    from storage import s3

    client = api_key_check(key).client
    data = upload.photo.read_bytes()
    ids: list[str] = []
    scratch: list[str] = []

    def through_django(n: str) -> None:
        status, job_id = post(f"{tag}-http-{n}")
        if status != 202:
            raise BenchFailed(f"--parts: an upload through Django answered {status}")
        ids.append(job_id)

    def service(n: str) -> None:
        with statecache.scope():  # as the middleware does for a request
            image, created = image_job_create(
                client=client, upload=io.BytesIO(data), size=len(data), request_id=f"{tag}-service-{n}", filename=upload.photo.name
            )
        ids.append(str(image.id))

    def put(n: str) -> None:
        scratch.append(f"bench-parts/{tag}/{n}")
        s3.storage_put(key=scratch[-1], data=io.BytesIO(data), length=len(data), content_type="image/jpeg")

    def statement(n: str) -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")

    measured = [
        ("upload through Django's WSGI handler (middleware, DRF, the view)", through_django),
        ("the submission service alone (jobs.services.image_job_create)", service),
        ("  of it: the image check (jobs.imaging.image_probe)", lambda n: image_probe(io.BytesIO(data))),
        ("  of it: the S3 client's put of the photo (storage.s3)", put),
        ("  of it: the repeat check (one statement, built once)", lambda n: submission._is_repeat(client.id, tag)),
        ("  the same check through the ORM's exists(), for scale", lambda n: Image.objects.filter(client=client, request_id=tag).exists()),
        ("  a statement's round trip, the least one costs (SELECT 1)", statement),
    ]
    say(f"\nparts: the API's CPU per upload of {upload.photo.name}, in this process, {count} runs each (thread CPU, no profiler)")
    spent = dict.fromkeys((name for name, _ in measured), 0.0)
    try:
        # In turns, one of each per round: the machine's speed wanders by the minute, and every
        # figure should see the same wandering.
        for n in range(-10, count):  # 10 unmeasured rounds first: connections, caches
            for name, work in measured:
                started = time.thread_time()
                work(str(n))
                if n >= 0:
                    spent[name] += time.thread_time() - started
    finally:
        for scratch_key in scratch:
            s3.storage_delete(key=scratch_key)
    figures = {name: seconds * 1000 / count for name, seconds in spent.items()}
    for name, ms in figures.items():
        say(f"  {ms:6.2f} ms  {name}")
    whole, alone = figures[measured[0][0]], figures[measured[1][0]]
    framework = whole - alone
    say(f"  {framework:6.2f} ms  Django and DRF around the service (the first less the second), {framework / whole:.0%} of the upload")
    return ids


# --- The run -----------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(prog="python bench/submit.py", description=__doc__.split("\n\n")[0])
    harness.add_service_flags(parser)
    parser.add_argument("--levels", default="1,4,16,64", help="concurrent clients, comma separated (default 1,4,16,64)")
    parser.add_argument("--uploads", type=int, default=300, help="uploads per level (default 300)")
    parser.add_argument("--warmup", type=int, default=20, help="uploads before the first level, not counted (default 20)")
    parser.add_argument("--photo", type=Path, default=PHOTO, help="the photo uploaded (default grace_hopper_1face.jpg)")
    parser.add_argument("--pause-detection", action="store_true", help="stop the detection workers consuming while measured (idle workers)")
    parser.add_argument("--wait", action="store_true", help="wait for every accepted job to finish, report any lost")
    parser.add_argument("--wait-timeout", type=float, default=900, help="with --wait: most seconds to wait (default 900)")
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="after the levels, N uploads through the API's code in this process under cProfile (its top functions)",
    )
    parser.add_argument("--profile-top", type=int, default=40, help="with --profile: how many functions to print (default 40)")
    parser.add_argument(
        "--parts",
        type=int,
        default=0,
        metavar="N",
        help="after the levels, the API's CPU per upload in this process: the whole request, the service alone, its parts (N runs each)",
    )
    args = parser.parse_args()
    try:
        args.levels = [int(x) for x in args.levels.split(",") if x.strip()]
    except ValueError:
        parser.error("--levels must be whole numbers, comma separated")
    if not args.levels or min(args.levels) < 1 or max(args.levels) > 512 or args.uploads < 1:
        parser.error("--levels must be 1..512 and --uploads at least 1")
    harness.check_service_flags(parser, args)
    return harness.guarded("bench/submit.py", lambda: measure(args))


def measure(args) -> int:
    pause = None
    with harness.service(args, key_name=KEY_NAME, prefix="fda-bench-submit", extra_env=NO_LIMITS) as svc:
        try:
            base, key = svc.base, svc.key
            upload = Upload(args.photo)
            run = uuid.uuid4().hex[:6]
            if args.pause_detection:
                pause = DetectionPause(svc.env)
                pause.pause()
            say(harness.banner("bench/submit.py"))
            say(
                f"{base}: POST /api/v1/images/ of {args.photo.name} ({upload.size / 1024:.1f} KiB), {args.uploads} per level, "
                f"detection {'paused' if pause else 'running'}"
            )
            ids: list[str] = []
            if args.warmup:
                warm = level(base, key, upload, clients=min(4, args.warmup), count=args.warmup, tag=f"bench-submit-{run}-warmup")
                ids += warm["ids"]
                if warm["others"]:
                    say(f"warm-up: {warm['others']} (429: run the service with API_RATE_LIMIT= API_UPLOAD_RATE_LIMIT=)")
            stack_cpu = (svc.stack.root_pid(), svc.stack.database) if svc.stack is not None else running_stack(svc.env)
            say(
                f"{'clients':>7} {'uploads':>7} {'uploads/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'non-202':>8} "
                f"{'stack CPU':>11} {'bench CPU':>11} {'others %':>9}"
            )
            for number, clients in enumerate(args.levels):
                tag = f"bench-submit-{run}-{number}-{clients}"
                figures = level(base, key, upload, clients=clients, count=args.uploads, tag=tag, stack=stack_cpu)
                ids += figures["ids"]
                say(level_line(figures))
                if figures["by_part"]:
                    say(parts_line(figures["by_part"]))
            if args.profile:
                ids += profile(svc.env, key, upload, count=args.profile, top=args.profile_top, tag=f"bench-submit-{run}-profile")
            if args.parts:
                ids += parts(svc.env, key, upload, count=args.parts, tag=f"bench-submit-{run}-parts")
            if pause is not None:
                pause.resume()
            if args.wait:
                say(f"waiting for the {len(ids)} accepted jobs (warm-up included) to finish ...")
                waited = time.monotonic()
                counts = wait_finished(base, key, ids, args.wait_timeout)
                say(
                    f"jobs: {counts['completed']} completed, {counts['failed']} failed, {counts['lost']} lost "
                    f"(not finished within {args.wait_timeout:.0f} s), after {time.monotonic() - waited:.0f} s"
                )
            return 0
        finally:
            if pause is not None:
                try:
                    pause.resume()
                except Exception as exc:  # noqa: BLE001 - said, with the way to do it by hand
                    say(f"could not resume detection: {exc}; by hand: celery -A face_detect_api control add_consumer {pause.queue}")


if __name__ == "__main__":
    sys.exit(main())
