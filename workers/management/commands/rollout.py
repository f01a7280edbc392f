"""Rollouts from the shell: start one, see where it stands, and promote, roll back, pause,
resume, advance or end it. The actor in the event log is ``shell``.

    manage.py rollout start --candidate mtcnn@1.1.0 --mode canary [--stages JSON] [--guardrails JSON]
                            [--shadow-sample F] [--quality-drop-max F]
    manage.py rollout status [ID]
    manage.py rollout promote|rollback|pause|resume|advance|end [ID] [--reason TEXT]

ID defaults to the live (running or paused) rollout. The rules are rollouts/services.py's; a
refusal is printed as the service words it and the command exits non-zero.

It lives with the workers (an entry point, like the Celery tasks) rather than in rollouts/: the
status shows the per-variant figures of jobs/stats.py, and rollouts/ never reads the jobs tables
(tests/test_architecture.py).
"""

import json

from django.core.management.base import BaseCommand, CommandError

from core.errors import DomainError
from jobs import stats as job_stats
from registry import services as registry_services
from rollouts import services as rollouts
from rollouts.models import Rollout, RolloutMode

ACTOR = "shell"
EVENTS_SHOWN = 10
TRANSITIONS = {
    "promote": (rollouts.rollout_promote, "make the candidate the active version and end the rollout"),
    "rollback": (rollouts.rollout_rollback, "end the rollout; new jobs go to the baseline at once"),
    "pause": (rollouts.rollout_pause, "freeze the weight; stages stop advancing (guardrails still watch)"),
    "resume": (rollouts.rollout_resume, "resume a paused rollout"),
    "advance": (rollouts.rollout_advance, "move a canary to its next stage (past the last: promote)"),
    "end": (rollouts.rollout_end, "end an A/B test or a shadow run with the baseline active"),
}
FIGURE_COLUMNS = (
    ("jobs", "jobs"),
    ("failed", "failed"),
    ("error_rate", "error rate"),
    ("p50_detection_ms", "p50 ms"),
    ("p95_detection_ms", "p95 ms"),
    ("faces_per_photo", "faces/photo"),
)


def _json_option(value: str | None, option: str):
    if value is None:
        return None
    try:
        return json.loads(value)
    except ValueError as exc:
        raise CommandError(f"{option} is not valid JSON: {exc}") from exc


def _cell(value) -> str:
    return "-" if value is None else str(value)


class Command(BaseCommand):
    help = "Start, follow and steer a model rollout. ID defaults to the live (running or paused) rollout."

    def add_arguments(self, parser):
        actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

        start = actions.add_parser("start", help="start rolling out a candidate version from the active one")
        start.add_argument("--candidate", required=True, help="the detector version id to roll out (name@version)")
        start.add_argument("--mode", required=True, help=f"one of {', '.join(RolloutMode.values)}")
        start.add_argument("--stages", help='JSON, e.g. \'[{"weight": 5, "min_seconds": 600, "min_jobs": 50}, {"weight": 100}]\'')
        start.add_argument("--guardrails", help='JSON, e.g. \'{"error_rate_max": 0.05, "p95_latency_ratio_max": 1.5}\'')
        start.add_argument("--shadow-sample", type=float, help="share of jobs (0 to 1) also run on the other version")
        start.add_argument("--quality-drop-max", type=float, help="refuse a candidate whose stored F1 is below the baseline's minus this")

        status = actions.add_parser("status", help="where a rollout stands: weight, stage, figures, workers, last events")
        status.add_argument("id", nargs="?", help="a rollout id (default: the live one)")

        for name, (_, description) in TRANSITIONS.items():
            action = actions.add_parser(name, help=description)
            action.add_argument("id", nargs="?", help="a rollout id (default: the live one)")
            action.add_argument("--reason", default="", help="why (kept in the event log)")

    def handle(self, *args, action: str, **options):
        try:
            if action == "start":
                self._start(options)
            elif action == "status":
                self._status(options.get("id"))
            else:
                service = TRANSITIONS[action][0]
                rollout = service(rollout_id=self._target(options.get("id")).id, actor=ACTOR, reason=options.get("reason") or "")
                self.stdout.write(f"{action}: done.")
                self._show(rollouts.rollout_get(rollout_id=rollout.id))
        except DomainError as exc:
            raise CommandError(exc.message) from exc

    def _target(self, rollout_id: str | None) -> Rollout:
        if rollout_id:
            return rollouts.rollout_get(rollout_id=rollout_id)
        rollout = rollouts.rollout_live()
        if rollout is None:
            raise CommandError("No rollout is running or paused; name one by its id.")
        return rollout

    def _start(self, options) -> None:
        rollout = rollouts.rollout_start(
            candidate=options["candidate"],
            mode=options["mode"],
            actor=ACTOR,
            stages=_json_option(options.get("stages"), "--stages"),
            guardrails=_json_option(options.get("guardrails"), "--guardrails"),
            shadow_sample=options.get("shadow_sample"),
            quality_drop_max=options.get("quality_drop_max"),
        )
        self._show(rollouts.rollout_get(rollout_id=rollout.id))
        # Alone on the last line, for scripts: ID=$(manage.py rollout start ... | tail -n 1)
        self.stdout.write(str(rollout.id))

    def _status(self, rollout_id: str | None) -> None:
        if not rollout_id and rollouts.rollout_live() is None:
            latest = rollouts.rollout_list().first()
            self.stdout.write("No rollout is running or paused." + (f" The latest: {latest.id} ({latest.status})." if latest else ""))
            return
        self._show(self._target(rollout_id))

    def _show(self, rollout: Rollout) -> None:
        out = self.stdout.write
        out(f"rollout {rollout.id}: {rollout.mode} of {rollout.candidate_id} from {rollout.baseline_id}")
        out(
            f"status {rollout.status}, weight {rollout.weight} %, started by {rollout.created_by} at {rollout.created_at:%Y-%m-%d %H:%M:%S}"
        )
        stage = rollout.current_stage
        if stage is not None:
            out(f"stage {stage.label}: weight {stage.weight} %, at least {stage.min_seconds} s and {stage.min_jobs} jobs")
        if rollout.ended_at:
            out(f"ended at {rollout.ended_at:%Y-%m-%d %H:%M:%S}")
        out(f"guardrails: {json.dumps(rollout.guardrails, sort_keys=True)}; breaches in a row: {rollout.breaches}")

        # An ended rollout: the last window before it ended (a window ending now would be empty).
        figures = job_stats.rollout_guardrail_figures(rollout=rollout, evaluation=False)["window"]
        out(f"window of {rollout.window_seconds} s:")
        out("  " + "".join(f"{title:>12}" for title in ("variant", *(t for _, t in FIGURE_COLUMNS))))
        for variant in ("baseline", "candidate"):
            row = figures[variant]
            out("  " + f"{variant:>12}" + "".join(f"{_cell(row.get(key)):>12}" for key, _ in FIGURE_COLUMNS))
        agreement = figures["agreement"]
        out(f"  agreement: {_cell(agreement['mean'])} (F1 at IoU 0.5) over {agreement['pairs']} shadow runs")

        warm = registry_services.workers_warm(version_id=rollout.candidate_id)
        out(f"workers warm: {warm['loaded']} of {warm['live']} live detection workers have {rollout.candidate_id} loaded")

        events = list(rollout.events.order_by("-at", "-id")[:EVENTS_SHOWN])
        out(f"last events ({len(events)} of {rollout.events.count()}):")
        for event in reversed(events):
            change = f"{event.from_status or '-'} -> {event.to_status}, {_cell(event.from_weight)} -> {_cell(event.to_weight)} %"
            reason = f": {event.reason}" if event.reason else ""
            out(f"  {event.at:%Y-%m-%d %H:%M:%S} {event.action} by {event.actor} ({change}){reason}")
