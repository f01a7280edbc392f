"""A canary of a truly slower candidate through a running service, until its guardrail rolls it back.

    python bench/rollout.py [--url http://127.0.0.1:8000] [--key fda_...]   # a service already running
    python bench/rollout.py --start-stack                                   # its own stack, stopped after

It registers tests/data/versions/mtcnn-slow@1.0.0.json (mtcnn@1.0.0's weights with min_face_size
4: several times slower per photo) with `manage.py detector_register`, starts a canary of it over
HTTP at 50 % with stages it never leaves by itself and a p95 latency guardrail, uploads the photos
of tests/data/photos under distinct cohorts at a steady rate (bounded in count and time), and
polls the rollout until the guardrails roll it back. Then it uploads a few more photos (they must
go to the baseline, outside the rollout), waits for every job to finish (jobs in flight keep the
version they were routed to), and prints a report; its LAST line is the benchmark figure: the
seconds from the first breach event of the streak to the rollback event (the events' `at`), and
how many jobs the candidate served between them, and in all.

Without --start-stack it starts nothing and talks to --url (loopback only). `manage.py` runs with
this process's environment, which must be the service's (the version is registered in the
service's database); without --key (or FDA_API_KEY) it creates an operator key
(`create_api_key bench-rollout --operator`) and revokes it at the end. It refuses to start while
another rollout is live, and it leaves the service as it found it: the rollout ended (rolled back by the guardrails, or by this
script if anything goes wrong) and the baseline active. The registered version stays registered
(versions are never deleted), inactive.

With --start-stack (or --start) it runs `python -m devstack up` (bench/harness.py): a temporary
var dir (FDA_VAR_DIR), free API and S3 ports, its own bucket and queues, its own PostgreSQL database when
PostgreSQL answers (dropped after) or the embedded stand-ins (--embedded forces them), and
ROLLOUT_EVALUATE_INTERVAL=5 for a quick verdict. It also receives the signed rollback alert
(ROLLOUT_ALERT_URL on loopback) and checks its signature. The stack is always stopped.

Prints figures; asserts nothing about them. Exit status 1 when no automatic rollback came or the
service could not be left as found.
"""

import argparse
import datetime as dt
import json
import sys
import threading
import time
import uuid
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as `python bench/rollout.py`

from bench import harness
from bench.harness import CONTENT_TYPES, PHOTOS, ROOT, TERMINAL, Api, BenchFailed, manage, parse_at, say

CANDIDATE_FILE = ROOT / "tests" / "data" / "versions" / "mtcnn-slow@1.0.0.json"
# One stage the canary never leaves by itself: only the guardrails end it.
STAGES = [{"weight": 50, "min_seconds": 3600, "min_jobs": 100000}]
GUARDRAILS = {"p95_latency_ratio_max": 2.0, "window_seconds": 120, "min_jobs": 5, "consecutive_breaches": 2}
EVALUATE_INTERVAL = "5"  # seconds, the stack's ROLLOUT_EVALUATE_INTERVAL (the default is 15)
ACTOR_NAME = "bench-rollout"


def jobs_n(count: int) -> str:
    return f"{count} job" + ("" if count == 1 else "s")


class RolloutApi(Api):
    """The harness's Api, with the rollouts' reads."""

    def rollout(self, rollout_id: str) -> dict:
        return self.call("GET", f"/api/v1/rollouts/{rollout_id}/").json()

    def live_rollouts(self) -> list[dict]:
        page = self.call("GET", "/api/v1/rollouts/", params={"page_size": 20}).json()
        return [r for r in page["results"] if r["status"] in ("running", "paused")]


# --- Uploads at a steady rate ----------------------------------------------------------------------


class Uploader(threading.Thread):
    """Uploads the photos in turn, one every 1/rate seconds, each under a cohort of its own, until
    ``count`` jobs or ``seconds`` have passed or it is stopped."""

    def __init__(
        self, api: Api, run: str, photos: list[Path], *, rate: float, count: int, seconds: float, phase: str, first: int = 0
    ) -> None:
        super().__init__(name=f"uploader-{phase}", daemon=True)
        self.api, self.run_id, self.photos = api, run, photos
        self.rate, self.count, self.seconds, self.phase, self.first = rate, count, seconds, phase, first
        self.stop = threading.Event()
        self.jobs: list[dict] = []
        self.refused: list[str] = []
        self.started_at = self.ended_at = 0.0

    def run(self) -> None:
        self.started_at = time.monotonic()
        interval, due = 1 / self.rate, self.started_at
        for n in range(self.first, self.first + self.count):
            if self.stop.is_set() or time.monotonic() - self.started_at > self.seconds:
                break
            photo = self.photos[n % len(self.photos)]
            cohort = f"bench-{self.run_id}-{n}"
            try:
                with open(photo, "rb") as fh:
                    response = self.api.call(
                        "POST",
                        "/api/v1/images/",
                        expect=(202,),
                        patience=15,
                        data={"request_id": f"bench-rollout-{self.run_id}-{n}", "cohort": cohort},
                        files={"image": (photo.name, fh, CONTENT_TYPES[photo.suffix.lower()])},
                    )
                self.jobs.append({"id": response.json()["id"], "cohort": cohort, "photo": photo.name, "phase": self.phase})
            except (BenchFailed, requests.RequestException) as exc:
                self.refused.append(str(exc)[:200])
            # A steady pace, never a burst to catch up after a slow answer.
            due = max(due + interval, time.monotonic())
            self.stop.wait(max(0.0, due - time.monotonic()))
        self.ended_at = time.monotonic()


# --- The run ---------------------------------------------------------------------------------------


def event_line(event: dict, start: dt.datetime) -> str:
    offset = (parse_at(event["at"]) - start).total_seconds()
    weights = (
        f"{event['from_weight']} -> {event['to_weight']} %" if event["from_weight"] != event["to_weight"] else f"{event['to_weight']} %"
    )
    return f"  +{offset:6.1f} s  {event['action']:8} by {event['actor']} ({event['to_status']}, {weights}): {event['reason']}"


def wait_warm(api: RolloutApi, rollout_id: str, timeout: float) -> tuple[dict, float]:
    """Wait (bounded) until every live detection worker reports the candidate loaded (pre-warm):
    the first candidate jobs then pay no model load."""
    started = time.monotonic()
    warm = {"live": 0, "loaded": 0}
    while time.monotonic() - started < timeout:
        warm = api.rollout(rollout_id)["workers_warm"]
        if warm["live"] > 0 and warm["loaded"] == warm["live"]:
            break
        time.sleep(1)
    return warm, time.monotonic() - started


def run(args, api: RolloutApi, env: dict[str, str], alerts: harness.Receiver | None, created_key: bool, interval: str | None) -> int:
    run_id = uuid.uuid4().hex[:6]
    photos = sorted(p for p in PHOTOS.iterdir() if p.suffix.lower() in CONTENT_TYPES)
    if not photos:
        raise BenchFailed(f"no photos in {PHOTOS}")
    candidate = "{name}@{version}".format(**json.loads(CANDIDATE_FILE.read_text()))

    live = api.live_rollouts()
    if live:
        raise BenchFailed(f"rollout {live[0]['id']} is {live[0]['status']}: this bench starts none while another is live")
    baseline = api.active_version()
    if baseline is None:
        raise BenchFailed("no detector version is active")
    if baseline == candidate:
        raise BenchFailed(f"{candidate} is the active version already: nothing to roll out")
    say(f"register: {manage(env, 'detector_register', str(CANDIDATE_FILE.relative_to(ROOT))).strip()}")

    rollout = api.call(
        "POST",
        "/api/v1/rollouts/",
        expect=(201,),
        json={"candidate": candidate, "mode": "canary", "stages": STAGES, "guardrails": GUARDRAILS},
    ).json()
    rollout_id = rollout["id"]
    started_at = parse_at(rollout["created_at"])
    say(
        f"rollout {rollout_id}: canary of {candidate} from {baseline} at {rollout['weight']} %, "
        f"guardrails {json.dumps(rollout['guardrails'], sort_keys=True)}"
    )
    uploader = after = None
    outcome = "none"
    try:
        warm, warm_s = wait_warm(api, rollout_id, args.warm_timeout)
        say(f"pre-warm: {warm['loaded']} of {warm['live']} live detection workers had {candidate} loaded after {warm_s:.1f} s")

        uploader = Uploader(api, run_id, photos, rate=args.rate, count=args.jobs, seconds=args.upload_seconds, phase="rollout")
        uploader.start()
        say(f"uploading up to {args.jobs} photos at {args.rate:g}/s for at most {args.upload_seconds:.0f} s, one cohort each")
        deadline = time.monotonic() + args.timeout
        shown = 1  # the start event
        while time.monotonic() < deadline:
            rollout = api.rollout(rollout_id)
            for event in rollout["events"][shown:]:
                say(event_line(event, started_at))
            shown = len(rollout["events"])
            if rollout["status"] not in ("running", "paused"):
                outcome = rollout["status"]
                break
            time.sleep(args.poll)
        uploader.stop.set()
        uploader.join(timeout=60)
        if outcome == "none":
            say(f"no verdict within {args.timeout:.0f} s")
        elif outcome == "rolled_back":
            # New jobs after the rollback: the baseline, outside any rollout.
            after = Uploader(api, run_id, photos, rate=args.rate, count=args.after, seconds=60, phase="after", first=10_000)
            after.start()
            after.join(timeout=120)
    finally:
        if uploader is not None:
            uploader.stop.set()
        # Leave the service as it was found: whatever happened, no rollout stays live.
        try:
            state = api.rollout(rollout_id)
            if state["status"] in ("running", "paused"):
                api.call(
                    "POST",
                    f"/api/v1/rollouts/{rollout_id}/rollback/",
                    json={"reason": "bench/rollout.py ended without a verdict"},
                    expect=(200, 409),
                )
                say("rolled back by bench/rollout.py (no automatic verdict)")
        except (BenchFailed, requests.RequestException) as exc:
            say(f"COULD NOT END rollout {rollout_id}: {exc}; end it by hand: manage.py rollout rollback {rollout_id}")

    ours = (uploader.jobs if uploader else []) + (after.jobs if after else [])
    ids = {job["id"] for job in ours}
    drain_deadline = time.monotonic() + args.drain_timeout
    jobs = api.jobs(ids) if ids else {}
    while any(job["status"] not in TERMINAL for job in jobs.values()) and time.monotonic() < drain_deadline:
        time.sleep(3)
        jobs = api.jobs(ids)
    rollout = api.rollout(rollout_id)
    active_after = api.active_version()
    still_live = api.live_rollouts()
    status_text = manage(env, "rollout", "status", rollout_id)
    if args.save:
        args.save.write_text(json.dumps(rollout, indent=2) + "\n")
    return report(
        args,
        rollout,
        outcome,
        baseline,
        candidate,
        ours,
        jobs,
        uploader,
        alerts,
        env,
        active_after,
        still_live,
        status_text,
        created_key,
        interval,
    )


def report(
    args,
    rollout,
    outcome,
    baseline,
    candidate,
    ours,
    jobs,
    uploader,
    alerts,
    env,
    active_after,
    still_live,
    status_text,
    created_key,
    interval,
) -> int:
    events = rollout["events"]
    started_at = parse_at(rollout["created_at"])
    during = [job for job in ours if job["phase"] == "rollout"]
    after = [job for job in ours if job["phase"] == "after"]
    variant = {job["id"]: (jobs[job["id"]].get("rollout") or {}).get("variant") for job in ours}
    on_candidate = [jobs[job["id"]] for job in during if variant[job["id"]] == "candidate"]
    on_baseline = [jobs[job["id"]] for job in during if variant[job["id"]] == "baseline"]
    upload_s = (uploader.ended_at - uploader.started_at) if uploader and uploader.ended_at else 0.0

    say("")
    say(harness.banner("bench/rollout.py report"))
    say(
        f"canary {rollout['id']}: {candidate} from {baseline}, weight {STAGES[0]['weight']} %, "
        f"guardrails {json.dumps(rollout['guardrails'], sort_keys=True)}"
    )
    say(
        f"uploads: {len(during)} accepted over {upload_s:.0f} s at {args.rate:g}/s ({len(uploader.refused) if uploader else 0} refused), "
        f"one cohort each: {len(on_candidate)} routed to the candidate, {len(on_baseline)} to the baseline"
        + (
            f", {len(during) - len(on_candidate) - len(on_baseline)} accepted after the rollback (outside it)"
            if len(during) > len(on_candidate) + len(on_baseline)
            else ""
        )
    )
    say("events:")
    for event in events:
        say(event_line(event, started_at))

    rollback = next((e for e in events if e["action"] == "rollback"), None)
    breaches = [e for e in events if e["action"] == "breach"]
    needed = int(rollout["guardrails"].get("consecutive_breaches", 1))
    ok = outcome == "rolled_back" and rollback is not None and rollback["actor"] == "system:guardrails" and len(breaches) >= needed
    if rollback is not None:
        checks = ((rollback["figures"].get("verdict") or {}).get("checks")) or []
        for check in checks:
            say(f"verdict at the rollback: {check['detail']}")
        window = rollback["figures"].get("window") or {}  # none on a rollback by hand
        for side in ("baseline", "candidate") if window else ():
            f = window[side]
            say(
                f"  window {side:9}: {f.get('jobs')} jobs, {f.get('latency_samples')} warm samples, "
                f"p50 {f.get('p50_detection_ms')} ms, p95 {f.get('p95_detection_ms')} ms, failed {f.get('failed')}"
            )

    def finished(job):
        return parse_at(job["finished_at"]) if job.get("finished_at") else None

    pending = [job for job in jobs.values() if job["status"] not in TERMINAL]
    if rollback is not None:
        rollback_at = parse_at(rollback["at"])
        in_flight = [job for job in on_candidate if not finished(job) or finished(job) > rollback_at]
        kept = [job for job in in_flight if job["status"] == "completed" and (job["model_version"] or "").startswith(candidate + "+")]
        say(
            f"in flight on the candidate at the rollback: {jobs_n(len(in_flight))}; afterwards {len(kept)} completed on {candidate}, "
            f"{sum(1 for j in in_flight if j['status'] == 'failed')} failed, "
            f"{sum(1 for j in in_flight if j['status'] not in TERMINAL)} unfinished "
            f"(each keeps the version it was routed to)"
        )
        after_jobs = [jobs[job["id"]] for job in after]
        on_base = [j for j in after_jobs if j.get("rollout") is None and (j.get("model_version") or "").startswith(baseline + "+")]
        if after_jobs:
            say(
                f"after the rollback: {jobs_n(len(after_jobs))} submitted, {len(on_base)} of them on {baseline} outside any rollout"
                + ("" if len(on_base) == len(after_jobs) else f" (the others: {[j['status'] for j in after_jobs if j not in on_base]})")
            )
        ok = ok and len(on_base) == len(after_jobs)
    if pending:
        say(f"{jobs_n(len(pending))} still unfinished after the {args.drain_timeout:.0f} s drain")

    if alerts is not None:
        # Sent by a delivery worker after the rollback commits: give it a bounded while to arrive.
        deadline = time.monotonic() + 30
        while rollback is not None and rollback["actor"] == "system:guardrails" and not alerts.received and time.monotonic() < deadline:
            time.sleep(0.5)
        if alerts.received:
            from callbacks.signing import WebhookVerificationError, verify_webhook

            alert = alerts.received[0]
            try:
                verify_webhook(env["CALLBACK_SIGNING_SECRET"], alert["headers"], alert["body"])
                verified = "signature verified"
            except WebhookVerificationError as exc:
                verified, ok = f"signature NOT verified: {exc}", False
            body = json.loads(alert["body"])
            late = (alert["at"] - parse_at(rollback["at"])).total_seconds() if rollback else float("nan")
            say(
                f"alert: {body['type']} POSTed to ROLLOUT_ALERT_URL {late:.1f} s after the rollback event, "
                f"webhook-id {alert['headers'].get('webhook-id') or alert['headers'].get('Webhook-Id')}, {verified}"
            )
        else:
            say("alert: none received at ROLLOUT_ALERT_URL")
            ok = ok and outcome != "rolled_back"

    left = (
        f"no rollout live, {active_after} active"
        if not still_live and active_after == baseline
        else (f"NOT as found: live {[r['id'] for r in still_live]}, active {active_after} (was {baseline})")
    )
    ok = ok and not still_live and active_after == baseline
    say(f"service left: {left}; {candidate} stays registered, inactive" + ("; the bench's operator key is revoked" if created_key else ""))
    say(f"manage.py rollout status {rollout['id']}:")
    for line in status_text.rstrip().splitlines():
        say(f"  | {line}")

    if rollback is None or len(breaches) < needed:
        say(f"RESULT: no automatic rollback (status {rollout['status']}): no breach-to-rollback figure")
        return 1
    streak = breaches[-needed:]  # the breaches in a row that made the rollback
    first_at, rollback_at = parse_at(streak[0]["at"]), parse_at(rollback["at"])
    between = [j for j in on_candidate if finished(j) and first_at < finished(j) <= rollback_at]
    served_while_live = [j for j in on_candidate if finished(j) and finished(j) <= rollback_at]
    served_all = [j for j in on_candidate if j["status"] in TERMINAL]
    earlier = f"; {len(breaches) - needed} earlier breaches did not make a streak" if len(breaches) > needed else ""
    say(
        f"RESULT: {(rollback_at - first_at).total_seconds():.1f} s from the first breach to the rollback "
        f"({streak[0]['at']} -> {rollback['at']}, {needed} breaches in a row"
        + (f", evaluated every {interval} s" if interval else "")
        + f"){earlier}; the candidate served {jobs_n(len(between))} between them, "
        f"{len(served_while_live)} before the rollback and {len(served_all)} in all (with the jobs in flight), "
        f"{(rollback_at - started_at).total_seconds():.0f} s after the start"
    )
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(prog="python bench/rollout.py", description=__doc__.split("\n\n")[0])
    harness.add_service_flags(parser, key_help="an operator's API key")
    parser.add_argument("--rate", type=float, default=0.5, help="uploads per second (default 0.5)")
    parser.add_argument("--jobs", type=int, default=120, help="most uploads during the canary (default 120)")
    parser.add_argument("--upload-seconds", type=float, default=300, help="most seconds of uploads (default 300)")
    parser.add_argument("--after", type=int, default=3, help="uploads after the rollback, to see them go to the baseline (default 3)")
    parser.add_argument("--timeout", type=float, default=600, help="most seconds to wait for the verdict (default 600)")
    parser.add_argument("--drain-timeout", type=float, default=300, help="most seconds to wait for the jobs in flight (default 300)")
    parser.add_argument("--warm-timeout", type=float, default=60, help="most seconds to wait for the workers' pre-warm (default 60)")
    parser.add_argument("--poll", type=float, default=2, help="seconds between reads of the rollout (default 2)")
    parser.add_argument("--save", type=Path, metavar="FILE", help="write the rollout's last GET /api/v1/rollouts/{id}/ body here (JSON)")
    args = parser.parse_args()
    if not 0 < args.rate <= 20 or not 0 < args.jobs <= 1000 or not 0 <= args.after <= 50:
        parser.error("--rate must be in (0, 20], --jobs in 1..1000, --after in 0..50")
    harness.check_service_flags(parser, args)
    return harness.guarded("bench/rollout.py", lambda: measure(args))


def measure(args) -> int:
    # With a stack of its own: its signed rollback alert comes here, and it evaluates often.
    alerts = harness.Receiver("/rollout-alert") if args.start else None
    extra_env = {"ROLLOUT_EVALUATE_INTERVAL": EVALUATE_INTERVAL, "ROLLOUT_ALERT_URL": alerts.url} if alerts else None
    try:
        with harness.service(args, key_name=ACTOR_NAME, prefix="fda-bench-rollout", operator=True, extra_env=extra_env) as svc:
            api = RolloutApi(svc.base, svc.key)
            probe = api.call("GET", "/api/v1/rollouts/", expect=(200, 401, 403), params={"page_size": 1})
            if probe.status_code != 200:
                raise BenchFailed(f"the key is refused on /api/v1/rollouts/ ({probe.status_code}): an operator's key is needed")
            rc = run(args, api, svc.env, alerts, created_key=svc.key_prefix is not None, interval=EVALUATE_INTERVAL if svc.stack else None)
            svc.failed = rc != 0
            return rc
    finally:
        if alerts is not None:
            alerts.close()


if __name__ == "__main__":
    sys.exit(main())
