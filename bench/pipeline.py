"""The whole pipeline, as a client sees it: photos/s from upload to callback, next to the raw
detector's photos/s on the same photos on the same machine, and the callback lag.

    python bench/pipeline.py                      # a running `make up` (see below), mtcnn@1.2.0
    python bench/pipeline.py --version mtcnn@1.1.0 --repeat 5
    python bench/pipeline.py --start              # a stack of its own (devstack), stopped after

It drives a RUNNING service at --url (loopback) and starts nothing itself, unless --start. The
callbacks come to an HTTP server this bench runs on 127.0.0.1, so the service must allow
loopback callbacks: `CALLBACK_ALLOWED_NETWORKS=127.0.0.0/8 make up` (--start sets it; the rate
limits too are off there, as `API_RATE_LIMIT= API_UPLOAD_RATE_LIMIT= make up` does). The key
comes from --key or FDA_API_KEY, or one is made with `manage.py create_api_key` and revoked after.

1. The raw detector: bench/detector.py's processes, with the version's engine loaded once, on
   every layout of processes x threads for these cores; the best is the ceiling (the stack is
   idle meanwhile).
2. The pipeline: every photo of tests/data/photos --repeat times, uploaded at once (pinned to
   --version with `model_version`, each with a callback_url), then timed from the first upload
   to the last callback. Throughput = photos / that time; it is set against the ceiling.
3. The callback lag: from the job's `finished_at` (detection done and stored) to the callback's
   arrival here, p50/p95/max (it holds the annotation, the outbox and the POST).

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
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import detector as raw_bench  # noqa: E402
from bench.rollout import LOOPBACK, AlertReceiver, Api, BenchFailed, OwnStack, manage, parse_at  # noqa: E402
from devstack.smoke import SmokeFailed  # noqa: E402

PHOTOS = ROOT / "tests" / "data" / "photos"
CONTENT_TYPES = {".png": "image/png", ".jpg": "image/jpeg"}


def say(message: str = "") -> None:
    print(message, flush=True)


def arrivals(receiver: AlertReceiver, ids: set[str]) -> dict[str, tuple[dt.datetime, dict]]:
    """Job id -> (arrival time, body) of the first callback of each of ``ids`` received so far."""
    found: dict[str, tuple[dt.datetime, dict]] = {}
    for post in list(receiver.received):
        body = json.loads(post["body"] or b"{}")
        if body.get("id") in ids:
            found.setdefault(body["id"], (post["at"], body))
    return found


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


def pipeline(api: Api, callbacks: AlertReceiver, version: str, repeat: int, timeout: float) -> dict:
    photos = sorted(PHOTOS.glob("*.[pj][np]g"))
    items = [(p, p.read_bytes()) for p in photos] * repeat
    run = uuid.uuid4().hex[:8]

    def upload(n_item):
        n, (path, data) = n_item
        response = api.call(
            "POST", "/api/v1/images/", expect=(202,),
            files={"image": (path.name, data, CONTENT_TYPES.get(path.suffix, "application/octet-stream"))},
            data={"request_id": f"bench-pipeline-{run}-{n}", "callback_url": callbacks.url, "model_version": version},
        )
        return response.json()["id"]

    started = dt.datetime.now(dt.timezone.utc)
    began = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        ids = set(pool.map(upload, enumerate(items)))
    uploaded_s = time.monotonic() - began
    deadline = time.monotonic() + timeout
    while len(arrivals(callbacks, ids)) < len(ids) and time.monotonic() < deadline:
        time.sleep(0.2)
    arrived = arrivals(callbacks, ids)
    if not arrived:
        raise BenchFailed("no callback arrived: does the service allow loopback callbacks (CALLBACK_ALLOWED_NETWORKS=127.0.0.0/8)?")
    last = max(at for at, _ in arrived.values())
    lags = [(at - parse_at(body["finished_at"])).total_seconds() * 1000 for at, body in arrived.values() if body.get("finished_at")]
    statuses = {}
    for _, body in arrived.values():
        statuses[body.get("status")] = statuses.get(body.get("status"), 0) + 1
    return {
        "jobs": len(ids), "called_back": len(arrived), "statuses": statuses, "upload_s": uploaded_s,
        "photos_per_s": len(arrived) / (last - started).total_seconds(), "lags": sorted(lags),
        "versions": sorted({body.get("model_version") or "" for _, body in arrived.values()}),
    }


def pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python bench/pipeline.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("FDA_URL", "http://127.0.0.1:8000"), help="the running service (loopback)")
    parser.add_argument("--key", default=os.environ.get("FDA_API_KEY", ""), help="an API key (default FDA_API_KEY; else one is made and revoked after)")
    parser.add_argument("--version", default="mtcnn@1.2.0", help="the version every upload asks for (model_version)")
    parser.add_argument("--repeat", type=int, default=3, help="times each photo is uploaded (default 3)")
    parser.add_argument("--timeout", type=float, default=600, help="most seconds to wait for the callbacks")
    parser.add_argument("--start", action="store_true", help="start a stack of its own (devstack) and stop it after")
    parser.add_argument("--skip-raw", action="store_true", help="measure the pipeline only")
    args = parser.parse_args()
    if not args.start and urlsplit(args.url).hostname not in LOOPBACK:
        parser.error("--url must be a loopback address")

    callbacks = AlertReceiver()  # a loopback server that keeps every POST: here, the callbacks
    stack, key_prefix, rc = None, None, 1
    env = dict(os.environ)
    try:
        say(f"# bench/pipeline.py, {time.strftime('%Y-%m-%d')}: {os.cpu_count()} cores, version {args.version}, "
            f"{len(list(PHOTOS.glob('*.[pj][np]g')))} photos x {args.repeat}")
        if args.start:
            say("stack: starting `python -m devstack up` ...")
            stack = OwnStack(embedded=False, alert_url="", ready_timeout=300, prefix="fda-bench-pipeline", extra_env={
                "CALLBACK_ALLOWED_NETWORKS": "127.0.0.0/8", "API_RATE_LIMIT": "", "API_UPLOAD_RATE_LIMIT": ""})
            env, base = stack.service_env, stack.base
            say(f"stack: {stack.description}")
        else:
            base = args.url
        key = args.key
        if not key:
            key = manage(env, "create_api_key", "bench-pipeline").strip().splitlines()[-1]
            key_prefix = key.split("_")[1]
        api = Api(base, key)
        ceiling, layout = (0.0, "") if args.skip_raw else best_raw(args.version, args.repeat)
        result = pipeline(api, callbacks, args.version, args.repeat, args.timeout)
        lags = result["lags"]
        say(f"\n| figure | value |\n|---|---|")
        say(f"| jobs uploaded / called back | {result['jobs']} / {result['called_back']} ({result['statuses']}) |")
        say(f"| uploads took | {result['upload_s']:.1f} s |")
        say(f"| pipeline, upload -> callback | {result['photos_per_s']:.2f} photos/s |")
        if ceiling:
            say(f"| raw detector, best layout ({layout}) | {ceiling:.2f} photos/s |")
            say(f"| pipeline / raw | {result['photos_per_s'] / ceiling:.2f} |")
        if lags:
            say(f"| callback lag after detection, p50 / p95 / max | {pct(lags, 0.5):.0f} / {pct(lags, 0.95):.0f} / {lags[-1]:.0f} ms |")
        say(f"| versions that ran | {', '.join(result['versions'])} |")
        rc = 0
    except (BenchFailed, SmokeFailed) as exc:
        say(f"bench/pipeline.py: FAILED: {exc}")
    except KeyboardInterrupt:
        say("bench/pipeline.py: interrupted")
    finally:
        if key_prefix and stack is None:
            try:
                manage(env, "revoke_api_key", key_prefix)
            except BenchFailed as exc:
                say(f"could not revoke the bench's key {key_prefix}: {exc}")
        if stack is not None:
            for problem in stack.close(keep=rc != 0):
                say(f"stack: {problem}")
        callbacks.close()
    return rc


if __name__ == "__main__":
    sys.exit(main())
