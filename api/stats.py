"""A detector version's figures over a window, for operators (api.auth.IsOperator):
GET /api/v1/models/{version_id}/stats/?window=3600&buckets=60.

The same figures the dashboard (/dashboard/) draws, from jobs.stats.version_stats: indexed reads
of the job rows, as a whole and in time buckets. A client's key gets 403 ``forbidden``.
"""

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from jobs import stats as job_stats
from registry import selectors as registry_selectors

from .auth import IsOperator
from .serializers import ErrorSerializer


class VersionStatsQuerySerializer(serializers.Serializer):
    window = serializers.IntegerField(
        min_value=job_stats.MIN_WINDOW_SECONDS,
        max_value=job_stats.MAX_WINDOW_SECONDS,
        default=3600,
        help_text="The window in seconds, ending now: 60 (a minute) to 2592000 (30 days).",
    )
    buckets = serializers.IntegerField(
        min_value=1,
        max_value=job_stats.MAX_BUCKETS,
        default=job_stats.DEFAULT_BUCKETS,
        help_text="How many equal time buckets the window is cut into.",
    )


class StatsFiguresSerializer(serializers.Serializer):
    jobs = serializers.IntegerField(help_text="Jobs finished (completed or failed)")
    failed = serializers.IntegerField()
    jobs_per_minute = serializers.FloatField()
    error_rate = serializers.FloatField(allow_null=True, help_text="failed / jobs; null without jobs")
    p50_detection_ms = serializers.FloatField(
        allow_null=True, help_text="Nearest-rank median detection time of completed warm jobs (a cold load is left out)"
    )
    p95_detection_ms = serializers.FloatField(allow_null=True)
    latency_samples = serializers.IntegerField(help_text="Jobs the percentiles are read from")
    faces_per_photo = serializers.FloatField(allow_null=True, help_text="Mean faces found per completed job")
    cpu_samples = serializers.IntegerField(help_text="Completed warm jobs that recorded their CPU time")
    cpu_seconds_per_1000 = serializers.FloatField(allow_null=True, help_text="CPU-seconds the detector used per 1,000 detections")


class StatsBucketSerializer(StatsFiguresSerializer):
    start = serializers.DateTimeField()
    end = serializers.DateTimeField(help_text="Jobs that finished after start, up to end")


class VersionStatsSerializer(serializers.Serializer):
    version = serializers.CharField()
    window_seconds = serializers.IntegerField()
    bucket_seconds = serializers.FloatField()
    since = serializers.DateTimeField()
    until = serializers.DateTimeField()
    totals = StatsFiguresSerializer(help_text="The whole window")
    buckets = StatsBucketSerializer(many=True, help_text="Oldest first")


class VersionStatsView(APIView):
    permission_classes = [IsAuthenticated, IsOperator]

    @extend_schema(
        operation_id="models_stats",
        summary="A version's figures over a window, in time buckets (operators)",
        description=(
            "Jobs per minute, error rate, p50 and p95 detection time, faces per photo and CPU-seconds per "
            "1,000 detections of the jobs this version finished in the window, as a whole and per bucket."
        ),
        parameters=[VersionStatsQuerySerializer],
        responses={
            200: VersionStatsSerializer,
            400: OpenApiResponse(ErrorSerializer, description="Invalid input; `error.field` names the field (window, buckets)."),
            401: OpenApiResponse(ErrorSerializer, description="No API key, or an invalid or revoked one."),
            403: OpenApiResponse(ErrorSerializer, description="A client's key: stats need an operator's key (`error.code` forbidden)."),
            404: OpenApiResponse(ErrorSerializer, description="No such detector version."),
            429: OpenApiResponse(ErrorSerializer, description="Rate limit reached; see Retry-After."),
        },
    )
    def get(self, request: Request, version_id: str) -> Response:
        query = VersionStatsQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        version = registry_selectors.detector_version_get(version_id=version_id)
        return Response(
            job_stats.version_stats(
                version_id=version.id, window_seconds=query.validated_data["window"], buckets=query.validated_data["buckets"]
            )
        )
