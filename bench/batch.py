"""A batch next to single uploads: items/s of a batch of photos by URL, and the latency of single
uploads made while the batch runs (do batch items starve them?).

    python bench/batch.py --start                  # a stack of its own, 1,000 items
    python bench/batch.py --start --items 200 --mode same

Modes (where the batch items wait; --start only, the stack is set up for it):
  queue  the batch queue, CELERY_QUEUE_DETECT_BATCH, which the detect workers consume beside the
         detect queue (the shipped setting);
  same   the detect queue itself, in line with the uploads (CELERY_QUEUE_DETECT_BATCH set to the
         detect queue's name): what a batch costs uploads without a queue of its own.

1. Warm-up: a few single uploads, so that each pool process has loaded the detector.
2. The batch: --items items, every one an image_url on a loopback HTTP server this bench runs
   (--photo from tests/data/photos, the same bytes under a different URL each), submitted in one
   POST /api/v1/batches/ with a callback_url on a loopback receiver.
3. While the batch runs: single uploads of the same photo, one at a time, --single-gap seconds
   apart, each waited for (GET until finished). Latency = finished_at - created_at (the server's
   times: queued, then detected), p50 / p95 / max.
4. Items/s = items / (batch finished_at - created_at); the batch's callback arrival is checked.

Prints figures; asserts nothing. Exit status 1 only when the bench itself could not run.
"""

import argparse
import os
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as `python bench/batch.py`

from bench import harness
from bench.harness import CONTENT_TYPES, NO_LIMITS, PHOTOS, Api, BenchFailed, Receiver, parse_at, percentile, say


class PhotoServer:
    """A loopback HTTP server that answers every GET with one photo's bytes."""

    def __init__(self, data: bytes, content_type: str) -> None:
        self.count = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                server.count += 1
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, name="photos", daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


SLOW: list[dict] = []  # the single uploads that took over 10 s, for the report


def single(api: Api, photo: Path, data: bytes, request_id: str, timeout: float) -> float:
    """Upload one photo and wait for its job to finish: its finished_at - created_at, in ms."""
    response = api.call(
        "POST",
        "/api/v1/images/",
        expect=(202,),
        files={"image": (photo.name, data, CONTENT_TYPES[photo.suffix.lower()])},
        data={"request_id": request_id},
    )
    job_id = response.json()["id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = api.call("GET", f"/api/v1/images/{job_id}/").json()
        if job["finished_at"]:
            took = (parse_at(job["finished_at"]) - parse_at(job["created_at"])).total_seconds() * 1000
            if took > 10_000:
                waited = (parse_at(job["started_at"]) - parse_at(job["created_at"])).total_seconds() if job["started_at"] else None
                SLOW.append({"id": job_id, "ms": round(took), "queued_s": waited, "status": job["status"], "error": job["error"]})
            return took
        time.sleep(0.05)
    raise BenchFailed(f"single upload {request_id} did not finish in {timeout:.0f} s")


def measure(args, api: Api, photos: PhotoServer, callbacks: Receiver, photo: Path) -> dict:
    data = photo.read_bytes()
    run = uuid.uuid4().hex[:8]
    for n in range(2 * (os.cpu_count() or 1)):
        single(api, photo, data, f"bench-batch-{run}-warm-{n}", args.timeout)
    alone = [single(api, photo, data, f"bench-batch-{run}-alone-{n}", args.timeout) for n in range(5)]

    items = [{"request_id": f"bench-batch-{run}-{n}", "image_url": f"{photos.base}/{photo.name}?n={n}"} for n in range(args.items)]
    began = time.monotonic()
    response = api.call("POST", "/api/v1/batches/", expect=(202,), json={"items": items, "callback_url": callbacks.url})
    submit_s = time.monotonic() - began
    batch = response.json()

    latencies, n = [], 0
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        state = api.call("GET", f"/api/v1/batches/{batch['id']}/", params={"page_size": 1}).json()
        if state["finished_at"]:
            break
        latencies.append(single(api, photo, data, f"bench-batch-{run}-single-{n}", args.timeout))
        n += 1
        time.sleep(args.single_gap)
    else:
        raise BenchFailed(f"the batch did not end in {args.timeout:.0f} s")
    wait_callback = time.monotonic() + 30
    while not callbacks.received and time.monotonic() < wait_callback:
        time.sleep(0.1)
    seconds = (parse_at(state["finished_at"]) - parse_at(state["created_at"])).total_seconds()
    return {
        "items": args.items,
        "counts": state["counts"],
        "submit_s": submit_s,
        "batch_s": seconds,
        "items_per_s": args.items / seconds,
        "latencies": sorted(latencies),
        "alone": sorted(alone),
        "callbacks": len(callbacks.received),
        "fetches": photos.count,
    }


def report(args, result: dict) -> None:
    lat, alone = result["latencies"], result["alone"]
    say("\n| figure | value |\n|---|---|")
    say(f"| mode | {args.mode} |")
    say(f"| batch items / counts | {result['items']} / {result['counts']} |")
    say(f"| POST /api/v1/batches/ took | {result['submit_s']:.2f} s |")
    say(f"| batch, created -> finished | {result['batch_s']:.1f} s: {result['items_per_s']:.2f} items/s |")
    say(f"| batch callbacks received | {result['callbacks']} |")
    say(f"| single upload alone (no batch), p50 / max | {percentile(alone, 50):.0f} / {alone[-1]:.0f} ms |")
    if lat:
        say(
            f"| single upload during the batch ({len(lat)} uploads), p50 / p95 / max | "
            f"{percentile(lat, 50):.0f} / {percentile(lat, 95):.0f} / {lat[-1]:.0f} ms |"
        )
    for slow in SLOW:
        say(f"\nslow single upload: {slow}")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python bench/batch.py", description=__doc__.split("\n\n")[0])
    harness.add_service_flags(parser)
    parser.add_argument("--items", type=int, default=1000, help="items in the batch (default 1000)")
    parser.add_argument("--photo", default="grace_hopper_1face.jpg", help="the photo of tests/data/photos every item and upload uses")
    parser.add_argument("--mode", choices=("queue", "same"), default="queue", help="where batch items wait (--start only; see above)")
    parser.add_argument("--single-gap", type=float, default=0.5, help="seconds between single uploads during the batch")
    parser.add_argument("--timeout", type=float, default=1800, help="most seconds to wait for the batch")
    args = parser.parse_args()
    harness.check_service_flags(parser, args)
    if args.mode != "queue" and not args.start:
        parser.error("--mode same needs --start (a stack set up for it)")
    return harness.guarded("bench/batch.py", lambda: run(args))


def run(args) -> int:
    photo = PHOTOS / args.photo
    say(f"# bench/batch.py, {time.strftime('%Y-%m-%d')}: {os.cpu_count()} cores, {args.items} items of {photo.name}, mode {args.mode}")
    photos = PhotoServer(photo.read_bytes(), CONTENT_TYPES[photo.suffix.lower()])
    callbacks = Receiver()
    extra_env = {**NO_LIMITS, "CALLBACK_ALLOWED_NETWORKS": "127.0.0.0/8", "IMAGE_URL_ALLOWED_NETWORKS": "127.0.0.0/8"}
    if args.mode == "same":
        # Both roles on one queue: the items wait in line with the uploads.
        name = f"fda-bench-batch-{uuid.uuid4().hex[:8]}-detect"
        extra_env.update(CELERY_QUEUE_DETECT=name, CELERY_QUEUE_DETECT_BATCH=name)
    try:
        with harness.service(args, key_name="bench-batch", prefix="fda-bench-batch", extra_env=extra_env) as svc:
            report(args, measure(args, Api(svc.base, svc.key), photos, callbacks, photo))
            return 0
    finally:
        photos.close()
        callbacks.close()


if __name__ == "__main__":
    sys.exit(main())
