"""Rollouts over HTTP, for operators only (api.auth.IsOperator): start one, follow it, and promote,
roll back, pause, resume, advance or end it.

Each view validates its input, calls one service of rollouts/services.py (where the rules are)
and renders the rollout. A client's key gets 403 ``forbidden`` on every route here; clients still
read the versions at /api/v1/models/.
"""

from typing import Any

from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.parsers import JSONParser
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from jobs import stats as job_stats
from jobs.representation import iso
from registry import services as registry_services
from rollouts import services as rollouts
from rollouts.models import Rollout, RolloutEvent, RolloutMode, RolloutStatus

from .auth import IsOperator
from .serializers import ErrorSerializer, _PageSerializer
from .views import _paginated

REASON_MAX_LENGTH = 1000


def rollout_actor(request: Request) -> str:
    """Who did it, as the event log records it."""
    return f"operator:{request.user.name}"


# --- Representation -------------------------------------------------------------------------------


def _stage(rollout: Rollout) -> dict[str, Any] | None:
    stage = rollout.current_stage
    if stage is None:
        return None
    return {**stage.as_dict(), "started_at": iso(rollout.stage_started_at)}


def rollout_event_representation(event: RolloutEvent) -> dict[str, Any]:
    return {
        "actor": event.actor,
        "action": event.action,
        "at": iso(event.at),
        "from_status": event.from_status or None,
        "to_status": event.to_status or None,
        "from_weight": event.from_weight,
        "to_weight": event.to_weight,
        "reason": event.reason,
        "figures": event.figures,
    }


def rollout_summary_representation(rollout: Rollout) -> dict[str, Any]:
    """A rollout as the list shows it: its plan and where it stands, without figures or events."""
    return {
        "id": str(rollout.id),
        "mode": rollout.mode,
        "status": rollout.status,
        "baseline": rollout.baseline_id,
        "candidate": rollout.candidate_id,
        "weight": rollout.weight,
        "stage": _stage(rollout),
        "stages": rollout.stages,
        "guardrails": rollout.guardrails,
        "shadow_sample": rollout.shadow_sample,
        "quality_drop_max": rollout.quality_drop_max,
        "breaches": rollout.breaches,
        "switched_at": iso(rollout.switched_at),
        "created_by": rollout.created_by,
        "created_at": iso(rollout.created_at),
        "updated_at": iso(rollout.updated_at),
        "ended_at": iso(rollout.ended_at),
    }


def rollout_representation(rollout: Rollout) -> dict[str, Any]:
    """One rollout with the figures the guardrails judge (per variant, on the window and since the
    start), the workers holding the candidate, and every event."""
    # An ended rollout's window is the last one before it ended (a window ending now would be empty).
    figures = job_stats.rollout_guardrail_figures(rollout=rollout, evaluation=False)
    return {
        **rollout_summary_representation(rollout),
        "figures": figures,
        "workers_warm": registry_services.workers_warm(version_id=rollout.candidate_id),
        "events": [rollout_event_representation(event) for event in rollout.events.order_by("at", "id")],
    }


# --- Input ----------------------------------------------------------------------------------------


class RolloutStageSerializer(serializers.Serializer):
    weight = serializers.IntegerField(min_value=1, max_value=100, help_text="The candidate's share of traffic in %, rising stage by stage.")
    min_seconds = serializers.IntegerField(
        min_value=0, max_value=rollouts.MAX_STAGE_SECONDS, required=False, help_text="Least time at this stage before it advances."
    )
    min_jobs = serializers.IntegerField(
        min_value=0, max_value=1_000_000, required=False, help_text="Candidate jobs that must finish in this stage before it advances."
    )


def _range(name: str) -> dict[str, Any]:
    low, high = rollouts.GUARDRAIL_RANGES[name]
    return {"min_value": low, "max_value": high, "required": False}


class RolloutGuardrailsSerializer(serializers.Serializer):
    p95_latency_ratio_max = serializers.FloatField(
        **_range("p95_latency_ratio_max"), help_text="Roll back when the candidate's p95 detection time exceeds the baseline's times this."
    )
    error_rate_max = serializers.FloatField(
        **_range("error_rate_max"), help_text="Roll back when more than this share of the candidate's jobs fail."
    )
    agreement_min = serializers.FloatField(
        **_range("agreement_min"),
        help_text="Roll back when the candidate's faces agree with the baseline's (F1 at IoU 0.5) less than this; needs shadow runs.",
    )
    window_seconds = serializers.IntegerField(**_range("window_seconds"), help_text="The sliding window judged (default 600).")
    min_jobs = serializers.IntegerField(
        **_range("min_jobs"), help_text="No verdict until each side has this many jobs in the window (default 20)."
    )
    consecutive_breaches = serializers.IntegerField(
        **_range("consecutive_breaches"), help_text="Evaluations in a row that must breach before the rollback (default 2)."
    )


# The plan and the guardrails are checked by the service (rollouts.services), which names the field
# and the stage at fault and refuses unknown guardrails; these fields pass them on as given and
# document their shape.
@extend_schema_field(RolloutStageSerializer(many=True, allow_null=True))
class _StagesField(serializers.JSONField):
    pass


@extend_schema_field(RolloutGuardrailsSerializer(allow_null=True))
class _GuardrailsField(serializers.JSONField):
    pass


class RolloutStartSerializer(serializers.Serializer):
    candidate = serializers.CharField(help_text="The detector version to roll out (see /api/v1/models/); the active one is the baseline.")
    mode = serializers.ChoiceField(
        RolloutMode.choices,
        help_text="canary: the candidate's share rises stage by stage; ab: a fixed split until ended; shadow: clients get the "
        "baseline, the candidate runs on copies; blue_green: everyone switches once every worker has the candidate loaded.",
    )
    stages = _StagesField(
        required=False,
        allow_null=True,
        help_text=(
            "canary: rising weights (default 5, 25, 50, 100 %); ab: one stage, the split (default 50 %); shadow and blue_green: none."
        ),
    )
    guardrails = _GuardrailsField(required=False, allow_null=True, help_text="Thresholds that roll the rollout back by themselves.")
    shadow_sample = serializers.FloatField(
        required=False,
        allow_null=True,
        help_text="Share of jobs (0 to 1) also run on the other version to measure agreement (shadow: default 1).",
    )
    quality_drop_max = serializers.FloatField(
        required=False,
        allow_null=True,
        help_text="Quality gate: refuse a candidate whose stored F1 (detector_evaluate) is below the baseline's minus this.",
    )


class RolloutReasonSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=REASON_MAX_LENGTH, required=False, allow_blank=True, help_text="Why: kept in the event log.")


# --- Output (schema only: the functions above build the bodies) ------------------------------------


class RolloutStageStateSerializer(serializers.Serializer):
    index = serializers.IntegerField(help_text="0-based")
    number = serializers.IntegerField(help_text="1-based, as people count stages")
    of = serializers.IntegerField(help_text="How many stages there are")
    weight = serializers.IntegerField()
    min_seconds = serializers.IntegerField()
    min_jobs = serializers.IntegerField()
    started_at = serializers.DateTimeField(allow_null=True)


class RolloutStageOutSerializer(serializers.Serializer):
    weight = serializers.IntegerField()
    min_seconds = serializers.IntegerField()
    min_jobs = serializers.IntegerField()


class VariantFiguresSerializer(serializers.Serializer):
    jobs = serializers.IntegerField(help_text="Finished jobs (completed or failed)")
    failed = serializers.IntegerField()
    error_rate = serializers.FloatField(allow_null=True)
    p50_detection_ms = serializers.FloatField(allow_null=True, help_text="Warm detections only (a cold load is not held against a version)")
    p95_detection_ms = serializers.FloatField(allow_null=True)
    latency_samples = serializers.IntegerField()
    faces_per_photo = serializers.FloatField(allow_null=True)


class AgreementFiguresSerializer(serializers.Serializer):
    pairs = serializers.IntegerField(help_text="Shadow runs compared")
    mean = serializers.FloatField(allow_null=True, help_text="Mean F1 of the candidate's faces against the baseline's (IoU >= 0.5)")


class SpanFiguresSerializer(serializers.Serializer):
    baseline = VariantFiguresSerializer()
    candidate = VariantFiguresSerializer()
    agreement = AgreementFiguresSerializer()


class RolloutFiguresSerializer(serializers.Serializer):
    window_seconds = serializers.FloatField()
    until = serializers.DateTimeField()
    window = SpanFiguresSerializer()
    since_start = SpanFiguresSerializer()


class WorkersWarmSerializer(serializers.Serializer):
    live = serializers.IntegerField(help_text="Detection worker processes heard from lately")
    loaded = serializers.IntegerField(help_text="Of those, how many have the candidate loaded")


class RolloutEventSerializer(serializers.Serializer):
    actor = serializers.CharField(help_text='"operator:<client>", "admin:<user>", "shell", "system:guardrails", ...')
    action = serializers.CharField(help_text="start, advance, pause, resume, switch, breach, rollback, promote, end, ...")
    at = serializers.DateTimeField()
    from_status = serializers.CharField(allow_null=True)
    to_status = serializers.CharField(allow_null=True)
    from_weight = serializers.IntegerField(allow_null=True)
    to_weight = serializers.IntegerField(allow_null=True)
    reason = serializers.CharField(allow_blank=True)
    figures = serializers.DictField(help_text="The figures behind the decision (guardrail windows, thresholds)")


class RolloutSummarySerializer(serializers.Serializer):
    id = serializers.UUIDField()
    mode = serializers.ChoiceField(RolloutMode.choices)
    status = serializers.ChoiceField(RolloutStatus.choices)
    baseline = serializers.CharField(help_text="The version active when it started")
    candidate = serializers.CharField()
    weight = serializers.IntegerField(help_text="The candidate's share of routed traffic now, in %")
    stage = RolloutStageStateSerializer(allow_null=True, help_text="The current stage; null without stages (shadow, blue_green)")
    stages = RolloutStageOutSerializer(many=True)
    guardrails = RolloutGuardrailsSerializer()
    shadow_sample = serializers.FloatField()
    quality_drop_max = serializers.FloatField(allow_null=True)
    breaches = serializers.IntegerField(help_text="Guardrail evaluations in a row that found a breach")
    switched_at = serializers.DateTimeField(allow_null=True, help_text="blue_green: when everyone went to the candidate")
    created_by = serializers.CharField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()
    ended_at = serializers.DateTimeField(allow_null=True)


class RolloutSerializer(RolloutSummarySerializer):
    figures = RolloutFiguresSerializer(help_text="Per variant, on the guardrails' window and since the start")
    workers_warm = WorkersWarmSerializer()
    events = RolloutEventSerializer(many=True, help_text="Every transition and verdict, oldest first")


class RolloutPageSerializer(_PageSerializer):
    results = RolloutSummarySerializer(many=True)


# --- Views ----------------------------------------------------------------------------------------


def _errors(*codes: int) -> dict:
    descriptions = {
        400: "Invalid input; `error.field` names the field.",
        401: "No API key, or an invalid or revoked one.",
        403: "A client's key: rollouts need an operator's key (`error.code` forbidden).",
        404: "No such rollout.",
        409: "Conflict; `error.code` says which (rollout_in_progress, rollout_not_live, ...).",
        415: "Not JSON.",
        429: "Rate limit reached; see Retry-After.",
    }
    return {code: OpenApiResponse(ErrorSerializer, description=descriptions[code]) for code in codes}


class _OperatorView(APIView):
    permission_classes = [IsAuthenticated, IsOperator]
    parser_classes = [JSONParser]


class RolloutCollectionView(_OperatorView):
    @extend_schema(
        operation_id="rollouts_list",
        summary="Rollouts, newest first (operators)",
        responses={200: RolloutPageSerializer, **_errors(401, 403, 429)},
    )
    def get(self, request: Request) -> Response:
        return _paginated(request, self, rollouts.rollout_list(), rollout_summary_representation)

    @extend_schema(
        operation_id="rollouts_start",
        summary="Start a rollout of a candidate version (operators)",
        description=(
            "The active version is the baseline. One rollout at a time: 409 rollout_in_progress while one "
            "is running or paused. With quality_drop_max, a candidate whose stored F1 is worse than the "
            "baseline's by more than that is refused (400 quality_gate)."
        ),
        request=RolloutStartSerializer,
        responses={201: RolloutSerializer, **_errors(400, 401, 403, 409, 415, 429)},
    )
    def post(self, request: Request) -> Response:
        serializer = RolloutStartSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        rollout = rollouts.rollout_start(
            candidate=data["candidate"],
            mode=data["mode"],
            actor=rollout_actor(request),
            stages=data.get("stages"),
            guardrails=data.get("guardrails"),
            shadow_sample=data.get("shadow_sample"),
            quality_drop_max=data.get("quality_drop_max"),
        )
        return Response(rollout_representation(rollouts.rollout_get(rollout_id=rollout.id)), status=status.HTTP_201_CREATED)


class RolloutDetailView(_OperatorView):
    @extend_schema(
        operation_id="rollouts_retrieve",
        summary="One rollout: where it stands, its figures per variant, the workers warm, its events (operators)",
        responses={200: RolloutSerializer, **_errors(401, 403, 404, 429)},
    )
    def get(self, request: Request, rollout_id: str) -> Response:
        return Response(rollout_representation(rollouts.rollout_get(rollout_id=rollout_id)))


class _RolloutActionView(_OperatorView):
    service = None  # a rollouts.services transition: (*, rollout_id, actor, reason) -> Rollout

    def post(self, request: Request, rollout_id: str) -> Response:
        serializer = RolloutReasonSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        rollout = self.service(rollout_id=rollout_id, actor=rollout_actor(request), reason=serializer.validated_data.get("reason", ""))
        return Response(rollout_representation(rollouts.rollout_get(rollout_id=rollout.id)))


def _action_view(name: str, service, summary: str, description: str) -> type[_RolloutActionView]:
    """A POST /rollouts/{id}/<name>/ view calling ``service``, documented as its own operation."""

    def post(self, request: Request, rollout_id: str) -> Response:
        return _RolloutActionView.post(self, request, rollout_id)

    post = extend_schema(
        operation_id=f"rollouts_{name}",
        summary=summary,
        description=description,
        request=RolloutReasonSerializer,
        responses={200: RolloutSerializer, **_errors(400, 401, 403, 404, 409, 415, 429)},
    )(post)
    title = name.capitalize()
    return type(f"Rollout{title}View", (_RolloutActionView,), {"service": staticmethod(service), "post": post, "__module__": __name__})


RolloutPromoteView = _action_view(
    "promote",
    rollouts.rollout_promote,
    "Promote the candidate (operators)",
    "The candidate becomes the active version for every new job; the rollout ends.",
)
RolloutRollbackView = _action_view(
    "rollback",
    rollouts.rollout_rollback,
    "Roll back (operators)",
    "New jobs go to the baseline at once; jobs already accepted keep the version they were routed to.",
)
RolloutPauseView = _action_view(
    "pause", rollouts.rollout_pause, "Pause (operators)", "The weight stays where it is and stages stop advancing; guardrails still watch."
)
RolloutResumeView = _action_view(
    "resume", rollouts.rollout_resume, "Resume a paused rollout (operators)", "The stage's clock starts again."
)
RolloutAdvanceView = _action_view(
    "advance", rollouts.rollout_advance, "Advance a canary to its next stage (operators)", "Past the last stage the candidate is promoted."
)
RolloutEndView = _action_view(
    "end",
    rollouts.rollout_end,
    "End the rollout with the baseline active (operators)",
    "For an A/B test or a shadow run: no verdict implied.",
)
