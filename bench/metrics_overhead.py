"""What the instrumentation costs: uploads/s and detection photos/s with metrics and JSON logs ON
against OFF, in one run, side by side.

    python bench/metrics_overhead.py                 # 4 rounds each, 15 to 30 minutes on 2 cores
    python bench/metrics_overhead.py --rounds 6 --uploads 300

Each round starts a stack of its own, as the other benches' --start does (bench/harness.py:
`python -m devstack up`, a temporary var dir, free API and S3 ports, its own bucket and queues,
its own PostgreSQL database when PostgreSQL answers, dropped after, else the embedded stand-ins;
loopback only), in one of two configurations:

  ON   as shipped: METRICS_ENABLED=true with PROMETHEUS_MULTIPROC_DIR (devstack sets it: every
       process writes its metrics files there), LOG_FORMAT=json, LOG_LEVEL=INFO, and /metrics
       scraped every 15 s while it is measured (deploy/prometheus/prometheus.yml's interval).
  OFF  METRICS_ENABLED=false (core/metrics.py records nothing and drops PROMETHEUS_MULTIPROC_DIR:
       no files), LOG_FORMAT=text at the same LOG_LEVEL=INFO: the same lines as plain text, which
       is what the service logged before it had metrics. Not scraped.

One stack at a time: the machine has two cores, and two stacks would measure each other. (Their
workers' names no longer clash: a stack of its own names them after its run, detect-<FDA_RUN>@%h.)

Both keep what has no switch: the X-Request-ID middleware with its access line per request, the
request id stored on the job, the CPU time measured around the detector (the dashboard's figure).
Rate limits are off in both (the workload would hit them).

Each round, on its fresh stack, after a warm-up that is not counted: the front door, --uploads
POSTs of one small JPEG from --threads threads (POST -> 202; uploads/s from the first request to
the last answer) with the detection worker paused (SIGSTOP) so that it does not share the CPUs
with the API, then resumed and drained; then detection, --photos photos of tests/data/photos
uploaded at once and detected by the real MTCNN worker (photos/s = photos / (last job's
finished_at - first job's created_at), the server's clock), drained too (annotated images
stored); then the stack is checked and stopped. The rounds alternate in ABBA order (ON OFF OFF ON
ON OFF ...) so that a drift of the machine weighs on both.

On a machine shared with others (a neighbour's test run takes a CPU for minutes) throughput alone
says little, so it also prints, per phase, the CPU time the stack itself spent per upload and
per photo (its processes and its database's PostgreSQL backends, from /proc), which others'
load disturbs far less, and the share of the machine that other processes took meanwhile. Each
phase waits (a bounded while) for a quiet machine, and one that others disturbed beyond
--quiet-share is run again (--retries, while time allows); the least disturbed attempt counts.

Each stack is checked before it stops: ON really recorded (every job it ran counted in /metrics,
metrics files, JSON log lines with http_request_id) and OFF really did not (no fda_ job series,
no metrics files, no JSON line). At the end it prints a table of every round and the medians,
and its LAST line: the overhead of ON in % for each figure (positive: ON costs more; the aim is
under 2 %), next to the rounds' own spread. Prints figures; asserts nothing about them. Exit
status 1 when a stack fails, a job fails, or a check of the configurations fails. The stacks are
always stopped.
"""

import argparse
import io
import json
import os
import platform
import signal
import statistics
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as `python bench/metrics_overhead.py`

from bench import harness
from bench.cpu import CpuWindow, cmdline, descendants, processes
from bench.harness import CONTENT_TYPES, NO_LIMITS, PHOTOS, Api, BenchFailed, OwnStack, api_key_create, parse_at, say

FRONT_DOOR_PHOTO = PHOTOS / "grace_hopper_1face.jpg"
FRONT_DOOR_WIDTH = 64  # px: a small JPEG, so that detecting the front door's jobs afterwards is quick
SCRAPE_SECONDS = 15  # deploy/prometheus/prometheus.yml: scrape_interval
QUIET_WAIT_SECONDS = 30  # the most a phase waits for other processes to calm down
LOG_LEVEL = "INFO"

CONFIGS = {
    "ON": {"METRICS_ENABLED": "true", "LOG_FORMAT": "json", "LOG_LEVEL": LOG_LEVEL},
    "OFF": {"METRICS_ENABLED": "false", "LOG_FORMAT": "text", "LOG_LEVEL": LOG_LEVEL},
}
DESCRIPTIONS = {
    "ON": f"METRICS_ENABLED=true, PROMETHEUS_MULTIPROC_DIR=<var>/metrics, LOG_FORMAT=json, LOG_LEVEL={LOG_LEVEL}, "
    f"/metrics scraped every {SCRAPE_SECONDS} s while measured",
    "OFF": f"METRICS_ENABLED=false (nothing recorded, no metrics files), LOG_FORMAT=text, LOG_LEVEL={LOG_LEVEL} "
    "(the same lines as text), not scraped",
}


# --- CPU time, ours and others' (/proc), and a stack per configuration ------------------------------


def others_share(stack: "ConfigStack", seconds: float = 2.0) -> float:
    """The share of the machine other processes take over ``seconds`` (CpuWindow)."""
    window = CpuWindow(stack.root_pid(), stack.database)
    time.sleep(seconds)
    return window.close()[1]


class ConfigStack(OwnStack):
    """The harness's OwnStack (its clean-up: queues, exchanges, database, var dir) with the
    variables of one configuration, rate limits off; started by start(), waited for by ready(),
    stopped by close()."""

    def __init__(self, name: str, *, embedded: bool) -> None:
        super().__init__(
            f"fda-bench-overhead-{name.lower()}", embedded=embedded, extra_env={**NO_LIMITS, "WORKER_METRICS_PORT": "0", **CONFIGS[name]}
        )
        self.name = name
        self.summary = (
            f"embedded stand-ins for {', '.join(self.replaced)}"
            if self.replaced
            else "PostgreSQL (a database of its own), RabbitMQ and Redis on loopback"
        ) + ", the bundled S3 server"
        self.paused: list[int] = []

    # The detection worker, paused while the front door is measured.

    def _detect_worker_pids(self) -> list[int]:
        """The detection worker's processes (its parent and its pool), found among this stack's
        descendants by their command line: `celery ... worker ... -Q <this stack's detect queue>`."""
        found = []
        for pid in sorted(descendants(processes(), self.root_pid())):
            argv = (cmdline(pid) or "").split(" ")
            if "worker" in argv and self.env["CELERY_QUEUE_DETECT"] in argv:
                found.append(pid)
        return found

    def detect_pause(self) -> None:
        self.paused = self._detect_worker_pids()
        if len(self.paused) < 2:  # the worker and at least one pool process
            raise BenchFailed(f"{self.name}: the detection worker's processes were not found (got {self.paused})")
        for pid in self.paused:
            os.kill(pid, signal.SIGSTOP)

    def detect_resume(self) -> None:
        for pid in self.paused:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        self.paused = []

    def close(self, *, keep: bool) -> list[str]:
        self.detect_resume()  # a stopped process would not hear the SIGTERM that stops the stack
        return super().close(keep=keep)


# --- The workload -----------------------------------------------------------------------------------


class Scraper(threading.Thread):
    """GET /metrics every SCRAPE_SECONDS (as Prometheus would) until stopped."""

    def __init__(self, base: str) -> None:
        super().__init__(name="scraper", daemon=True)
        self.base, self.stop, self.scrapes, self.errors = base, threading.Event(), 0, 0

    def run(self) -> None:
        session = requests.Session()
        session.trust_env = False
        while True:
            try:
                ok = session.get(f"{self.base}/metrics", timeout=10).status_code == 200
            except requests.RequestException:
                ok = False
            self.scrapes += ok
            self.errors += not ok
            if self.stop.wait(SCRAPE_SECONDS):
                return


class Runner:
    """The workload on one stack, with an API key of its own."""

    def __init__(
        self, stack: ConfigStack, *, threads: int, small_jpeg: bytes, photos: list[Path], deadline: float, quiet: float, retries: int
    ) -> None:
        self.stack, self.threads, self.small_jpeg, self.photos, self.deadline = stack, threads, small_jpeg, photos, deadline
        self.quiet, self.retries, self.attempt = quiet, retries, 0
        self.key, _ = api_key_create(stack.service_env, f"bench-overhead-{stack.name.lower()}")
        self.api = Api(stack.base, self.key)
        self.local = threading.local()
        self.run_id = uuid.uuid4().hex[:6]
        self.jobs_done = 0

    def _api(self) -> Api:
        # One session per thread: requests' sessions are not meant to be shared between threads.
        if not hasattr(self.local, "api"):
            self.local.api = Api(self.stack.base, self.key)
        return self.local.api

    def _upload(self, name: str, content: bytes, content_type: str, request_id: str) -> dict:
        response = self._api().call(
            "POST",
            "/api/v1/images/",
            expect=(202,),
            patience=0,
            data={"request_id": request_id},
            files={"image": (name, content, content_type)},
        )
        return response.json()

    def _uploads(self, items: list[tuple[str, bytes, str]], tag: str) -> tuple[list[dict], float]:
        """Upload every item from the threads at once: the 202 bodies, in order, and the seconds
        from the first request to the last answer."""
        with ThreadPoolExecutor(self.threads, thread_name_prefix="upload") as pool:
            started = time.monotonic()
            bodies = list(pool.map(lambda n: self._upload(*items[n], f"bench-overhead-{self.run_id}-{tag}-{n}"), range(len(items))))
            return bodies, time.monotonic() - started

    def _check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise BenchFailed("--max-minutes reached")

    def _wait_finished(self, ids: list[str], timeout: float = 600) -> dict[str, dict]:
        """Wait until every job is terminal and, when completed, has its annotated image stored:
        nothing of it is left to the next round. One worker takes the jobs in order, so the last
        one is polled (cheap) and the rest read in one page once it is done."""
        deadline = min(time.monotonic() + timeout, self.deadline)

        def done(job: dict) -> bool:
            return job["status"] == "failed" or (job["status"] == "completed" and bool(job["output_image_url"]))

        found: dict[str, dict] = {}
        pending = [ids[-1]]
        while True:
            for job_id in pending:
                found[job_id] = self.api.call("GET", f"/api/v1/images/{job_id}/").json()
            pending = [job_id for job_id in pending if not done(found[job_id])]
            if not pending and len(found) < len(ids):
                # Newest first: this key's latest jobs are these.
                wanted, number, page = set(ids), 1, {"next": True}
                while page.get("next") and len(wanted & set(found)) < len(ids):
                    page = self.api.call("GET", "/api/v1/images/", params={"page_size": min(len(ids), 200), "page": number}).json()
                    found.update({job["id"]: job for job in page["results"] if job["id"] in wanted})
                    number += 1
                pending = [job_id for job_id in ids if job_id not in found or not done(found[job_id])]
            if not pending:
                break
            if time.monotonic() > deadline:
                raise BenchFailed(f"{self.stack.name}: {len(pending)} jobs unfinished after {timeout:.0f} s")
            self.stack.stack.check_alive()
            time.sleep(0.5)
        failed = [job for job in found.values() if job["status"] == "failed"]
        if failed:
            raise BenchFailed(f"{self.stack.name}: {len(failed)} jobs failed, e.g. {failed[0]['error']}")
        self.jobs_done += len(ids)
        return found

    def _quiet(self) -> None:
        """Wait (a bounded while) until other processes leave the machine nearly idle."""
        waited = time.monotonic()
        while others_share(self.stack) > self.quiet and time.monotonic() - waited < QUIET_WAIT_SECONDS:
            self._check_time()

    def _measured(self, phase) -> dict:
        """Run ``phase`` on a quiet machine; again (up to ``retries`` times) when other processes
        took more than the quiet share meanwhile. The least disturbed attempt counts."""
        attempts = []
        for _ in range(1 + self.retries):
            self._quiet()
            started = time.monotonic()
            attempts.append(phase())
            # Again only while the run's time allows it, with room to spare for the other rounds.
            took = time.monotonic() - started
            if attempts[-1]["others"] <= self.quiet or time.monotonic() + 4 * took > self.deadline:
                break
        best = min(attempts, key=lambda a: a["others"])
        return {**best, "attempts": len(attempts)}

    def front_door(self, count: int, tag: str, *, measured: bool = True) -> dict:
        """uploads/s of ``count`` uploads of the small JPEG, the detection worker paused, and the
        stack's CPU milliseconds per upload meanwhile."""

        def phase() -> dict:
            self._check_time()
            self.attempt += 1
            self.stack.detect_pause()
            try:
                window = CpuWindow(self.stack.root_pid(), self.stack.database)
                bodies, seconds = self._uploads([("small.jpg", self.small_jpeg, "image/jpeg")] * count, f"{tag}-{self.attempt}")
                cpu_s, others = window.close()
            finally:
                self.stack.detect_resume()
            self._wait_finished([body["id"] for body in bodies])
            return {"rate": count / seconds, "cpu_ms": cpu_s * 1000 / count, "others": others}

        return self._measured(phase) if measured else phase()

    def detection(self, count: int, tag: str, *, measured: bool = True) -> dict:
        """photos/s of ``count`` photos, upload to job completed, by the server's times, and the
        stack's CPU milliseconds per photo from the first upload until the last annotated image
        is stored (the whole pipeline)."""
        chosen = [self.photos[n % len(self.photos)] for n in range(count)]
        items = [(p.name, p.read_bytes(), CONTENT_TYPES[p.suffix.lower()]) for p in chosen]

        def phase() -> dict:
            self._check_time()
            self.attempt += 1
            window = CpuWindow(self.stack.root_pid(), self.stack.database)
            bodies, _ = self._uploads(items, f"{tag}-{self.attempt}")
            jobs = self._wait_finished([body["id"] for body in bodies])
            cpu_s, others = window.close()
            first = min(parse_at(body["created_at"]) for body in bodies)
            last = max(parse_at(job["finished_at"]) for job in jobs.values())
            return {"rate": count / (last - first).total_seconds(), "cpu_ms": cpu_s * 1000 / count, "others": others}

        return self._measured(phase) if measured else phase()


def small_jpeg() -> bytes:
    from PIL import Image

    with Image.open(FRONT_DOOR_PHOTO) as photo:
        height = round(photo.height * FRONT_DOOR_WIDTH / photo.width)
        out = io.BytesIO()
        photo.convert("RGB").resize((FRONT_DOOR_WIDTH, height)).save(out, "JPEG", quality=85)
    return out.getvalue()


def small_jpeg_size(data: bytes) -> str:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return f"{image.width}x{image.height}, {len(data) / 1024:.1f} KiB"


# --- The checks: each configuration is what the table says ---------------------------------------


def log_lines(path: Path, since: int) -> list[str]:
    """The lines the stack's processes wrote after byte ``since`` (honcho's prefix removed)."""
    with open(path, "rb") as fh:
        fh.seek(since)
        text = fh.read().decode(errors="replace")
    return [line.partition(" | ")[2] for line in text.splitlines() if " | " in line]


def json_lines(lines: list[str]) -> list[dict]:
    found = []
    for line in lines:
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict) and "level" in value:
            found.append(value)
    return found


def scraped_jobs(base: str) -> tuple[float, float]:
    """(finished jobs, detections) in the stack's /metrics: fda_jobs_finished_total and
    fda_detection_seconds_count, summed over their labels."""
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(f"{base}/metrics", timeout=30).text
    finished = detections = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "fda_jobs_finished_total":
                finished += sample.value
            elif sample.name == "fda_detection_seconds_count":
                detections += sample.value
    return finished, detections


def check(stack: ConfigStack, runner: Runner, log_start: int, counted_jobs: int) -> dict:
    """What the stack really did: its /metrics counts, metrics files and log lines (those written
    since ``log_start``: the ``counted_jobs`` of the measured phases, every attempt). BenchFailed
    when it is not its configuration."""
    finished, detections = scraped_jobs(stack.base)
    files = len(list((stack.var / "metrics").glob("*.db")))
    lines = log_lines(stack.log_path, log_start)
    as_json = json_lines(lines)
    found = {
        "jobs": runner.jobs_done,
        "counted_jobs": counted_jobs,
        "finished": finished,
        "detections": detections,
        "files": files,
        "lines": len(lines),
        "json": len(as_json),
        "with_id": sum(1 for line in as_json if line.get("http_request_id")),
        "log_bytes": stack.log_path.stat().st_size - log_start,
    }
    if stack.name == "ON":
        if finished != runner.jobs_done or detections != runner.jobs_done or not files:
            raise BenchFailed(
                f"ON: /metrics counts {finished:.0f} finished jobs and {detections:.0f} detections of the "
                f"{runner.jobs_done} jobs it ran ({files} metrics files): ON did not record as it should"
            )
        if not found["with_id"] or len(as_json) < len(lines) // 2:
            raise BenchFailed(f"ON: {len(as_json)} of {len(lines)} log lines are JSON, {found['with_id']} with http_request_id")
    else:
        if finished or detections or files:
            raise BenchFailed(f"OFF: /metrics counts {finished:.0f} finished jobs, {files} metrics files: OFF recorded")
        if as_json:
            raise BenchFailed(f"OFF: {len(as_json)} log lines are JSON, e.g. {as_json[0]}")
    return found


def checks_line(name: str, found: list[dict]) -> str:
    total = {key: sum(f[key] for f in found) for key in found[0]}
    volume = f"{total['log_bytes'] / total['counted_jobs'] / 1024:.2f} KiB of log per measured job"
    if name == "ON":
        return (
            f"check ON : /metrics counted {total['finished']:.0f} finished jobs and {total['detections']:.0f} detections of the "
            f"{total['jobs']} run (warm-ups included), {total['files']} metrics files; {total['json']} of {total['lines']} log lines "
            f"JSON, {total['with_id']} with http_request_id; {volume}"
        )
    return (
        f"check OFF: no fda_ job series in /metrics and no metrics files ({total['jobs']} jobs run); {total['lines']} log lines, "
        f"none JSON; {volume}"
    )


# --- The run ----------------------------------------------------------------------------------------


def order(rounds: int) -> list[str]:
    """ON OFF OFF ON ON OFF ...: each pair flipped, so that a linear drift weighs on both alike."""
    sequence = []
    for n in range(rounds):
        sequence += ["ON", "OFF"] if n % 2 == 0 else ["OFF", "ON"]
    return sequence


def overhead(on: float, off: float) -> float:
    """How much slower ON is, in % of OFF (negative: ON was faster)."""
    return (off - on) / off * 100


def spread(values: list[float]) -> float:
    return (max(values) - min(values)) / statistics.median(values) * 100


def one_round(args, name: str, number: int, *, jpeg: bytes, photos: list[Path], deadline: float, current: list) -> dict:
    """A fresh stack of configuration ``name``: started, warmed up, measured, checked, stopped."""
    started = time.monotonic()
    stack = ConfigStack(name, embedded=args.embedded)
    current[:] = [stack]
    stack.start()
    stack.ready(args.ready_timeout)
    ready_s = time.monotonic() - started
    runner = Runner(
        stack, threads=args.threads, small_jpeg=jpeg, photos=photos, deadline=deadline, quiet=args.quiet_share, retries=args.retries
    )
    # Detection first: a job completed says the detection worker and its pool are up (/readyz
    # answers before), which pausing it needs.
    runner.detection(len(photos), "warmup-detect", measured=False)
    runner.front_door(args.warmup_uploads, "warmup-door", measured=False)
    log_start, jobs_start = stack.log_path.stat().st_size, runner.jobs_done
    scraper = Scraper(stack.base) if name == "ON" else None
    if scraper:
        scraper.start()
    try:
        door = runner.front_door(args.uploads, "door")
        detect = runner.detection(args.photos, "detect")
    finally:
        if scraper:
            scraper.stop.set()
            scraper.join(timeout=15)
    found = check(stack, runner, log_start, runner.jobs_done - jobs_start)
    problems = stack.close(keep=args.keep)
    current.clear()
    if problems:
        raise BenchFailed(f"round {number} ({name}): " + "; ".join(problems))
    row = {
        "name": name,
        "door": door,
        "detect": detect,
        "found": found,
        "description": stack.summary,
        "ready_s": ready_s,
        "scrapes": scraper.scrapes if scraper else None,
    }
    say("  " + row_line(number, row))
    return row


def row_line(number: int, row: dict) -> str:
    door, detect = row["door"], row["detect"]

    def tries(phase: dict) -> str:
        return f" x{phase['attempts']}" if phase["attempts"] > 1 else "   "

    return (
        f"{number:>5}  {row['name']:4} {door['rate']:9.1f} {door['cpu_ms']:9.1f}  {door['others'] * 100:4.0f}%{tries(door)}  "
        f"{detect['rate']:8.2f} {detect['cpu_ms']:9.0f}  {detect['others'] * 100:4.0f}%{tries(detect)}"
    )


HEADER = f"{'round':>5}  {'':4} {'uploads/s':>9} {'CPU-ms/up':>9}  {'other':>5}     {'photos/s':>8} {'CPU-ms/ph':>9}  {'other':>5}"
FIGURES = (
    ("uploads/s", "door", "rate", 1, True),
    ("CPU-ms per upload", "door", "cpu_ms", 2, False),
    ("photos/s", "detect", "rate", 2, True),
    ("CPU-ms per photo", "detect", "cpu_ms", 0, False),
)


def run(args, current: list) -> int:
    photos = sorted(p for p in PHOTOS.iterdir() if p.suffix.lower() in CONTENT_TYPES)
    if not photos or not FRONT_DOOR_PHOTO.is_file():
        raise BenchFailed(f"no photos in {PHOTOS}")
    jpeg = small_jpeg()
    deadline = time.monotonic() + args.max_minutes * 60
    sequence = order(args.rounds)
    say(
        f"rounds: {' '.join(sequence)}; each on a fresh stack, after a warm-up of {len(photos)} photos and "
        f"{args.warmup_uploads} uploads that is not counted"
    )
    say(HEADER)
    rows = [
        one_round(args, name, number, jpeg=jpeg, photos=photos, deadline=deadline, current=current)
        for number, name in enumerate(sequence, start=1)
    ]
    return report(args, rows, jpeg, sequence, len(photos))


def report(args, rows: list[dict], jpeg: bytes, sequence: list[str], photo_count: int) -> int:
    from importlib.metadata import version

    def values(name: str, phase: str, key: str) -> list[float]:
        return [r[phase][key] for r in rows if r["name"] == name]

    say()
    say(
        harness.banner(
            "bench/metrics_overhead.py",
            f"{platform.system()} {platform.release()}",
            f"Python {platform.python_version()}",
            f"prometheus-client {version('prometheus-client')}",
        )
    )
    for name in CONFIGS:
        say(f"{name:3}: {DESCRIPTIONS[name]}")
    say(
        f"both: a fresh `python -m devstack up` per round ({rows[0]['description']}; its own queues and bucket): gunicorn 2 workers, "
        "1 detection worker (concurrency 1), 1 delivery worker (concurrency 2), beat; the X-Request-ID middleware and its access line "
        "(no switch), rate limits off, jobs without callback_url"
    )
    say(
        f"front door: {args.uploads} uploads of one JPEG ({small_jpeg_size(jpeg)}) from {args.threads} threads, POST -> 202, "
        "the detection worker paused (SIGSTOP) meanwhile, then drained"
    )
    say(
        f"detection: {args.photos} photos of tests/data/photos (the {photo_count} in turn) uploaded at once, upload -> job completed "
        "(the server's created_at to the last finished_at), MTCNN on the CPU, then drained"
    )
    say(
        "CPU-ms: CPU time of the stack's processes and of the PostgreSQL backends of its database, per upload (during the "
        "uploads) and per photo (first upload to last annotated image stored); RabbitMQ and Redis are shared and left out"
    )
    say(
        f"other: the share of the machine other processes took meanwhile (a neighbour's tests); a phase above "
        f"{args.quiet_share * 100:.0f} % was run again (xN: attempts; the least disturbed counts), each after waiting for a quiet machine"
    )
    say(f"order: {' '.join(sequence)} ({args.rounds} round{'s' if args.rounds > 1 else ''} each)")
    say()
    say(HEADER)
    for number, row in enumerate(rows, start=1):
        say(row_line(number, row))
    say()
    say(f"{'median (min..max, spread)':28} " + "   ".join(f"{name:>30}" for name in CONFIGS))
    overheads, noises = [], []
    for label, phase, key, decimals, higher_is_better in FIGURES:
        cells, medians = [], {}
        for name in CONFIGS:
            v = values(name, phase, key)
            medians[name] = statistics.median(v)
            cells.append(f"{medians[name]:.{decimals}f} ({min(v):.{decimals}f}..{max(v):.{decimals}f}, {spread(v):4.1f} %)")
        say(f"{label:28} " + "   ".join(f"{cell:>30}" for cell in cells))
        # Positive: ON costs more (fewer per second, or more CPU per item).
        cost = overhead(medians["ON"], medians["OFF"]) if higher_is_better else -overhead(medians["ON"], medians["OFF"])
        overheads.append(f"{label} {cost:+.1f} %")
        noises.append(max(spread(values(name, phase, key)) for name in CONFIGS))
    say("spread: (max - min) / median of one configuration's rounds: the noise a difference has to beat")
    for name in CONFIGS:
        found = [r["found"] for r in rows if r["name"] == name]
        say(checks_line(name, found))
    say(
        f"RESULT: overhead of metrics + JSON logs, ON against OFF (medians of {args.rounds} round{'s' if args.rounds > 1 else ''} each; "
        f"positive = ON costs more; aim < 2 %): "
        + ", ".join(overheads)
        + f" (rounds' spread up to {', '.join(f'{n:.0f}' for n in noises)} %)"
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python bench/metrics_overhead.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4, help="measured rounds per configuration (default 4)")
    parser.add_argument("--uploads", type=int, default=200, help="uploads per front-door round (default 200)")
    parser.add_argument("--threads", type=int, default=8, help="uploading threads (default 8)")
    parser.add_argument("--photos", type=int, default=18, help="photos per detection round (default 18)")
    parser.add_argument("--warmup-uploads", type=int, default=20, help="uploads of each stack's warm-up (default 20)")
    parser.add_argument("--max-minutes", type=float, default=60, help="most minutes for the whole run (default 60)")
    harness.add_stack_flags(parser)
    parser.add_argument(
        "--quiet-share", type=float, default=0.10, help="the most of the machine other processes may take during a phase (default 0.10)"
    )
    parser.add_argument("--retries", type=int, default=1, help="more attempts of a phase other processes disturbed (default 1)")
    args = parser.parse_args()
    if not 1 <= args.rounds <= 20 or not 1 <= args.uploads <= 2000 or not 1 <= args.threads <= 32 or not 1 <= args.photos <= 200:
        parser.error("--rounds must be in 1..20, --uploads in 1..2000, --threads in 1..32, --photos in 1..200")
    if not 1 <= args.warmup_uploads <= 200 or not 0 < args.quiet_share <= 1 or not 0 <= args.retries <= 5:
        parser.error("--warmup-uploads must be in 1..200, --quiet-share in (0, 1], --retries in 0..5")

    current: list[ConfigStack] = []  # the stack of the round under way, for the clean-up

    def measure() -> int:
        try:
            return run(args, current)
        finally:
            for stack in current:
                for problem in stack.close(keep=True):
                    say(f"stack {stack.name}: {problem}")
                if stack.stack is not None:
                    say(f"stack {stack.name}: last lines of its output:\n" + stack.log_tail(30))

    return harness.guarded("bench/metrics_overhead.py", measure)


if __name__ == "__main__":
    sys.exit(main())
