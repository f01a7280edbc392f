"""The whole pipeline, as a client sees it: photos/s from upload to callback, next to the raw
detector's photos/s on the same photos on the same machine, and the callback lag.

    python bench/pipeline.py                      # a running `make up` (see below), mtcnn@1.2.0
    python bench/pipeline.py --version mtcnn@1.1.0 --repeat 5
    python bench/pipeline.py --start              # a stack of its own (devstack), stopped after

It drives a RUNNING service at --url (loopback) and starts nothing itself, unless --start. The
callbacks come to an HTTP server this bench runs on 127.0.0.1, so the service must allow
loopback callbacks: `CALLBACK_ALLOWED_NETWORKS=127.0.0.0/8 make up` (--start sets it; the rate
limits too are off there, as `API_RATE_LIMIT= API_UPLOAD_RATE_LIMIT= make up` does). The key
comes from --key or FDA_API_KEY, or one is made with `manage.py create_api_key` and revoked after
(with --start always made: the own stack has a database of its own).

1. The raw detector: bench/detector.py's processes, with the version's engine loaded once, on
   every layout of processes x threads for these cores; the best is the ceiling (the stack is
   idle meanwhile).
2. The pipeline: a warm-up (every photo once per core, not counted: each pool process loads the
   version and meets the sizes, as the raw detector is warmed), then every photo of
   tests/data/photos --repeat times, uploaded at once (pinned to --version with `model_version`,
   each with a callback_url), timed from the first upload to the last callback. Throughput =
   photos / that time; it is set against the ceiling.
3. The callback lag: from the job's `finished_at` (detection done and stored) to the callback's
   arrival here, p50/p95/max (it holds the annotation, the outbox and the POST), during the burst
   and then with one job at a time (nothing else running); and each job's time queued and in
   the detect task.
4. The profile across processes (bench/cpu.py): CPU ms per job of each part of the machine (API,
   detect and deliver workers, S3 server, PostgreSQL, RabbitMQ, ...) over the timed run, the
   machine's busy share, and from the service's /metrics the detector's own CPU per job, so
   that the task around it shows too; then the whole stack's CPU-seconds per 1,000 photos and
   the CPU per job outside the detector. With --start only the stack's own processes count
   (and its database's transactions, sessions and statement time per job, pg_stat_database):
   a neighbour's work on a shared machine is left out.

Prints figures; asserts nothing. Exit status 1 only when the bench itself could not run.
"""

import argparse
import datetime as dt
import json
import os
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as `python bench/pipeline.py`

from bench import cpu, harness
from bench import detector as raw_bench
from bench.harness import CONTENT_TYPES, NO_LIMITS, PHOTOS, Api, BenchFailed, Receiver, parse_at, percentile, say


def arrivals(receiver: Receiver, ids: set[str]) -> dict[str, tuple[dt.datetime, dict]]:
    """Job id -> (arrival time, body) of the first callback of each of ``ids`` received so far."""
    found: dict[str, tuple[dt.datetime, dict]] = {}
    for post in list(receiver.received):
        body = json.loads(post["body"] or b"{}")
        if body.get("id") in ids:
            found.setdefault(body["id"], (post["at"], body))
    return found


def detection_sums(api: Api) -> dict[str, float] | None:
    """The service's detection totals from its /metrics (every worker's, when they share the
    metrics directory as under `make up`): seconds of wall time and of CPU spent in the detector.
    None when the service does not expose them."""
    try:
        text = api.call("GET", "/metrics").text
    except BenchFailed:
        return None
    sums = {"wall": 0.0, "cpu": 0.0, "count": 0.0}
    names = {"fda_detection_seconds_sum{": "wall", "fda_detection_cpu_seconds_total{": "cpu", "fda_detection_seconds_count{": "count"}
    for line in text.splitlines():
        for prefix, name in names.items():
            if line.startswith(prefix):
                sums[name] += float(line.rsplit(" ", 1)[1])
    return sums if sums["count"] else None


def database_counts(stack) -> dict[str, float] | None:
    """A stack of its own's PostgreSQL database, from pg_stat_database: transactions (each
    statement outside a transaction is one), sessions opened, and milliseconds its backends
    spent executing statements. None without a database of its own."""
    if stack is None or not stack.database:
        return None
    from urllib.parse import urlsplit

    import psycopg2

    parts = urlsplit(stack.service_env["DATABASE_URL"])
    try:
        conn = psycopg2.connect(
            dbname="postgres", host=parts.hostname, port=parts.port or 5432, user=parts.username, password=parts.password
        )
        conn.autocommit = True
        with conn.cursor() as cursor:
            # Backends report their counts when idle, at most once a second: give them the time.
            cursor.execute("SELECT pg_sleep(1.2)")
            cursor.execute(
                "SELECT xact_commit + xact_rollback, sessions, active_time FROM pg_stat_database WHERE datname = %s", (stack.database,)
            )
            row = cursor.fetchone()
        conn.close()
    except Exception:  # noqa: BLE001 - a figure the bench can do without
        return None
    return {"transactions": float(row[0]), "sessions": float(row[1]), "active_ms": float(row[2])} if row else None


def best_raw(version: str, repeat: int) -> tuple[float, str]:
    """(photos/s, layout) of the best processes x threads layout of the raw detector here."""
    cores = os.cpu_count() or 1
    args = argparse.Namespace(testdata=str(PHOTOS), repeat=repeat)
    layouts = sorted({(1, cores), (cores, 1), (1, 1)})
    figures = {f"{p} x {t}": raw_bench.run(version, "cpu", p, t, args)["photos_per_s"] for p, t in layouts}
    for layout, value in figures.items():
        say(f"  raw {version}, {layout} (processes x threads): {value:.2f} photos/s")
    layout = max(figures, key=figures.get)
    return figures[layout], layout


def pipeline(api: Api, callbacks: Receiver, version: str, repeat: int, timeout: float, stack=None) -> dict:
    photos = sorted(PHOTOS.glob("*.[pj][np]g"))
    run = uuid.uuid4().hex[:8]

    def upload(n_item):
        n, (path, data) = n_item
        response = api.call(
            "POST",
            "/api/v1/images/",
            expect=(202,),
            files={"image": (path.name, data, CONTENT_TYPES[path.suffix.lower()])},
            data={"request_id": f"bench-pipeline-{run}-{n}", "callback_url": callbacks.url, "model_version": version},
        )
        return response.json()["id"]

    def submit(items, first: int) -> set[str]:
        with ThreadPoolExecutor(4) as pool:
            return set(pool.map(upload, enumerate(items, start=first)))

    def wait(ids: set[str]) -> None:
        deadline = time.monotonic() + timeout
        while len(arrivals(callbacks, ids)) < len(ids) and time.monotonic() < deadline:
            time.sleep(0.2)

    # Warm-up, as the raw detector gets one: every photo once per core, so that each pool process
    # has loaded the version (a version other than the active one loads on its first job) and
    # met the photos' sizes. Not counted.
    warm = [(p, p.read_bytes()) for p in photos] * (os.cpu_count() or 1)
    wait(submit(warm, 0))
    items = [(p, p.read_bytes()) for p in photos] * repeat
    started = dt.datetime.now(dt.UTC)
    detection_before = detection_sums(api)
    # A stack of its own: its processes alone (this machine may be shared), found before and after.
    pids = cpu.stack_pids(stack.root_pid(), stack.database) if stack is not None else None
    database_before = database_counts(stack)
    before = cpu.snapshot()
    began = time.monotonic()
    ids = submit(items, len(warm))
    uploaded_s = time.monotonic() - began
    wait(ids)
    arrived = arrivals(callbacks, ids)
    after = cpu.snapshot()
    if pids is not None:
        pids |= cpu.stack_pids(stack.root_pid(), stack.database)
    detection_after = detection_sums(api)
    database_after = database_counts(stack)
    if not arrived:
        raise BenchFailed("no callback arrived: does the service allow loopback callbacks (CALLBACK_ALLOWED_NETWORKS=127.0.0.0/8)?")
    last = max(at for at, _ in arrived.values())
    lags = [(at - parse_at(body["finished_at"])).total_seconds() * 1000 for at, body in arrived.values() if body.get("finished_at")]
    # Where each job's time went: waiting for a detect slot, in the detect task, then the result.
    stages: dict[str, list[float]] = {"queued (created -> started)": [], "detect task (started -> finished)": []}
    for _, body in arrived.values():
        if body.get("started_at") and body.get("finished_at"):
            created, begun, done = (parse_at(body[k]) for k in ("created_at", "started_at", "finished_at"))
            stages["queued (created -> started)"].append((begun - created).total_seconds() * 1000)
            stages["detect task (started -> finished)"].append((done - begun).total_seconds() * 1000)
    statuses = {}
    for _, body in arrived.values():
        statuses[body.get("status")] = statuses.get(body.get("status"), 0) + 1
    # The callback lag with nothing else running: each photo alone, the next once it is called
    # back. Set against the lag above, it tells the lag's own cost from the wait for a core.
    alone = []
    for n, item in enumerate([(p, p.read_bytes()) for p in photos], start=len(warm) + len(items)):
        one = submit([item], n)
        wait(one)
        for at, body in arrivals(callbacks, one).values():
            if body.get("finished_at"):
                alone.append((at - parse_at(body["finished_at"])).total_seconds() * 1000)
    return {
        "lags_alone": sorted(alone),
        "jobs": len(ids),
        "called_back": len(arrived),
        "statuses": statuses,
        "upload_s": uploaded_s,
        "photos_per_s": len(arrived) / (last - started).total_seconds(),
        "lags": sorted(lags),
        "stages": {name: sorted(values) for name, values in stages.items() if values},
        "versions": sorted({body.get("model_version") or "" for _, body in arrived.values()}),
        "cpu": (before, after),
        "stack_pids": pids,
        "database": {k: database_after[k] - database_before[k] for k in database_after} if database_before and database_after else None,
        "detection": {k: detection_after[k] - detection_before[k] for k in detection_after}
        if detection_before and detection_after
        else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="python bench/pipeline.py", description=__doc__.split("\n\n")[0])
    harness.add_service_flags(parser)
    parser.add_argument("--version", default="mtcnn@1.2.0", help="the version every upload asks for (model_version)")
    parser.add_argument("--repeat", type=int, default=3, help="times each photo is uploaded (default 3)")
    parser.add_argument("--timeout", type=float, default=600, help="most seconds to wait for the callbacks")
    parser.add_argument("--skip-raw", action="store_true", help="measure the pipeline only")
    args = parser.parse_args()
    harness.check_service_flags(parser, args)
    return harness.guarded("bench/pipeline.py", lambda: measure(args))


def measure(args) -> int:
    say(
        f"# bench/pipeline.py, {time.strftime('%Y-%m-%d')}: {os.cpu_count()} cores of {cpu.cpu_model()}, version {args.version}, "
        f"{len(list(PHOTOS.glob('*.[pj][np]g')))} photos x {args.repeat}"
    )
    callbacks = Receiver()  # a loopback server that keeps every POST: here, the callbacks
    extra_env = {**NO_LIMITS, "CALLBACK_ALLOWED_NETWORKS": "127.0.0.0/8"}
    try:
        with harness.service(args, key_name="bench-pipeline", prefix="fda-bench-pipeline", extra_env=extra_env) as svc:
            api = Api(svc.base, svc.key)
            ceiling, layout = (0.0, "") if args.skip_raw else best_raw(args.version, args.repeat)
            result = pipeline(api, callbacks, args.version, args.repeat, args.timeout, stack=svc.stack)
            report(result, ceiling, layout)
            return 0
    finally:
        callbacks.close()


def report(result: dict, ceiling: float, layout: str) -> None:
    lags = result["lags"]
    say("\n| figure | value |\n|---|---|")
    say(f"| jobs uploaded / called back | {result['jobs']} / {result['called_back']} ({result['statuses']}) |")
    say(f"| uploads took | {result['upload_s']:.1f} s |")
    say(f"| pipeline, upload -> callback | {result['photos_per_s']:.2f} photos/s |")
    if ceiling:
        say(f"| raw detector, best layout ({layout}) | {ceiling:.2f} photos/s |")
        say(f"| pipeline / raw | {result['photos_per_s'] / ceiling:.2f} |")
    if lags:
        say(
            f"| callback lag after detection, p50 / p95 / max | {percentile(lags, 50):.0f} / "
            f"{percentile(lags, 95):.0f} / {lags[-1]:.0f} ms |"
        )
    alone = result["lags_alone"]
    if alone:
        say(f"| callback lag, one job at a time, p50 / max | {percentile(alone, 50):.0f} / {alone[-1]:.0f} ms |")
    for name, values in result["stages"].items():
        say(f"| {name}, p50 / p95 | {percentile(values, 50):.0f} / {percentile(values, 95):.0f} ms |")
    say(f"| versions that ran | {', '.join(result['versions'])} |")
    # The profile across processes: where each job's CPU went (the detector's share is in
    # the detect worker's), next to what the raw detector spends on a photo.
    pids = result["stack_pids"]
    per_job = cpu.report(*result["cpu"], per=result["called_back"], say=say, only=pids)
    # The bench's own client and other processes (a neighbour's, on a shared machine) are not
    # what a user pays for: the whole stack is the rest.
    stack_ms = sum(ms for part, ms in per_job.items() if part not in ("bench (the client)", "other"))
    counted = (
        "the stack's own processes, its PostgreSQL backends, the broker and Redis" if pids is not None else "every part but the bench's"
    )
    say(f"\nWhole stack: {stack_ms:.1f} ms of CPU per photo = **{stack_ms:.0f} CPU-seconds per 1,000 photos** ({counted})")
    database = result["database"]
    if database:
        n = max(result["called_back"], 1)
        say(
            f"PostgreSQL, per job (pg_stat_database; the upload's included): {database['transactions'] / n:.1f} transactions, "
            f"{database['sessions'] / n:.2f} sessions opened, {database['active_ms'] / n:.1f} ms executing statements."
        )
    detection = result["detection"]
    if detection and detection["count"]:
        inside = detection["cpu"] * 1000 / detection["count"]
        say(
            f"In the detect worker, the detector itself: {inside:.1f} ms of CPU per job "
            f"({detection['wall'] * 1000 / detection['count']:.1f} ms of wall time; /metrics); the task around it: "
            f"{per_job.get('detect worker', 0.0) - inside:.1f} ms."
        )
        say(f"Outside the detector (the whole stack less the detector itself): **{stack_ms - inside:.1f} ms of CPU per job**.")
    if ceiling:
        say(
            f"\nThe raw detector ({layout}) spends about {(os.cpu_count() or 1) * 1000 / ceiling:.0f} ms of CPU per photo "
            "when it keeps every core busy."
        )


if __name__ == "__main__":
    sys.exit(main())
