"""Input validation for the API, the representation of detector versions, and the serializers
that document in the schema the shapes jobs/representation.py builds."""

from typing import Any

from rest_framework import serializers

from callbacks.models import DeliveryStatus
from callbacks.urlpolicy import UrlRefused, check_callback_url
from jobs.models import JobStatus
from jobs.representation import iso
from rollouts.models import Variant

CALLBACK_URL_MAX_LENGTH = 2048


def validate_request_id(value: str) -> str:
    if not value.strip():
        raise serializers.ValidationError("request_id may not be blank.", code="blank")
    if not value.isprintable():
        raise serializers.ValidationError("request_id must be printable characters only.", code="invalid")
    return value


def request_id_field(**kwargs) -> serializers.CharField:
    """The client's id of a job: 1 to 128 printable characters, kept as given."""
    return serializers.CharField(max_length=128, trim_whitespace=False, validators=[validate_request_id], **kwargs)


class ImageListQuerySerializer(serializers.Serializer):
    """The query of GET /api/v1/images/."""

    request_id = request_id_field(required=False)


class ImageSubmitSerializer(serializers.Serializer):
    """The fields of POST /api/v1/images/. The image's content is checked by the service."""

    image = serializers.FileField(allow_empty_file=False, use_url=False)
    request_id = request_id_field()
    callback_url = serializers.URLField(max_length=CALLBACK_URL_MAX_LENGTH, required=False, allow_blank=True)
    model_version = serializers.CharField(
        max_length=64, required=False, allow_blank=True, help_text="A detector version id (see /api/v1/models/); default: the active one."
    )
    cohort = request_id_field(
        required=False,
        help_text="Who the photo is for (a user, device or camera id): during a rollout, jobs of one cohort always get "
        "the same model version. Default: your API client. Not used when model_version is given.",
    )

    def validate_callback_url(self, value: str) -> str:
        if not value:
            return value
        try:
            check_callback_url(value)
        except UrlRefused as exc:
            raise serializers.ValidationError(str(exc), code=exc.code) from exc
        return value


def detector_version_representation(version, *, active_id: str | None) -> dict[str, Any]:
    return {
        "id": version.id,
        "name": version.name,
        "version": version.version,
        "label": version.label,
        "active": version.id == active_id,
        "retired": version.retired_at is not None,
        "implementation": version.implementation,
        "weights": version.weights,
        "packages": version.packages,
        "settings": version.settings,
        "settings_hash": version.settings_hash,
        "code_commit": version.code_commit or None,
        "notes": version.notes,
        # Release records: what it was trained or tuned on, its build, the image that serves it
        # (null when the version file names none), and its latest stored evaluation.
        "dataset": version.dataset or None,
        "build": version.build or None,
        "image": version.image or None,
        "evaluation": version.evaluation,
        "created_at": iso(version.created_at),
    }


# --- Schema-only serializers: they document the shapes that the functions above build ---------


class ErrorDetailSerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()
    field = serializers.CharField(allow_null=True)


class ErrorSerializer(serializers.Serializer):
    error = ErrorDetailSerializer()


class BoxSerializer(serializers.Serializer):
    x = serializers.IntegerField(min_value=0)
    y = serializers.IntegerField(min_value=0)
    width = serializers.IntegerField(min_value=0)
    height = serializers.IntegerField(min_value=0)


class LandmarksSerializer(serializers.Serializer):
    left_eye = serializers.ListField(child=serializers.FloatField(), min_length=2, max_length=2)
    right_eye = serializers.ListField(child=serializers.FloatField(), min_length=2, max_length=2)
    nose = serializers.ListField(child=serializers.FloatField(), min_length=2, max_length=2)
    mouth_left = serializers.ListField(child=serializers.FloatField(), min_length=2, max_length=2)
    mouth_right = serializers.ListField(child=serializers.FloatField(), min_length=2, max_length=2)


class FaceSerializer(serializers.Serializer):
    box = BoxSerializer()
    confidence = serializers.FloatField(min_value=0, max_value=1)
    landmarks = LandmarksSerializer()


class JobErrorSerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()


class CallbackAttemptSerializer(serializers.Serializer):
    number = serializers.IntegerField()
    at = serializers.DateTimeField()
    duration_ms = serializers.IntegerField()
    status_code = serializers.IntegerField(allow_null=True)
    error = serializers.CharField(allow_null=True)


class CallbackStateSerializer(serializers.Serializer):
    url = serializers.URLField(allow_null=True)
    status = serializers.ChoiceField(["none", *DeliveryStatus.values])
    webhook_id = serializers.CharField(allow_null=True)
    attempts = CallbackAttemptSerializer(many=True)
    delivered_at = serializers.DateTimeField(allow_null=True)
    next_attempt_at = serializers.DateTimeField(allow_null=True)


class JobRolloutSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    variant = serializers.ChoiceField(Variant.values)


class ImageSubmittedSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    request_id = serializers.CharField()
    status = serializers.ChoiceField(JobStatus.values)
    status_url = serializers.URLField()
    created_at = serializers.DateTimeField()


class ImageSerializer(ImageSubmittedSerializer):
    """A job, as GET returns it and as the callback carries it."""

    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    model_version = serializers.CharField(allow_null=True)
    rollout = JobRolloutSerializer(
        allow_null=True, help_text="The rollout that chose this job's model version, and the side it got; null outside a rollout."
    )
    width = serializers.IntegerField(allow_null=True)
    height = serializers.IntegerField(allow_null=True)
    face_count = serializers.IntegerField(allow_null=True)
    faces = FaceSerializer(many=True)
    error = JobErrorSerializer(allow_null=True)
    output_image_url = serializers.URLField(allow_null=True)
    callback = CallbackStateSerializer()


class RedeliverSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    webhook_id = serializers.CharField()
    status = serializers.ChoiceField(DeliveryStatus.values)


class _PageSerializer(serializers.Serializer):
    """The envelope of a paginated list (api.pagination.JobPagination)."""

    count = serializers.IntegerField()
    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)


class ImagePageSerializer(_PageSerializer):
    results = ImageSerializer(many=True)


class WeightFileSerializer(serializers.Serializer):
    file = serializers.CharField()
    sha256 = serializers.CharField()


class DatasetSerializer(serializers.Serializer):
    tag = serializers.CharField()
    sha256 = serializers.CharField(required=False)


class DetectorVersionSerializer(serializers.Serializer):
    id = serializers.CharField(help_text="name@version")
    name = serializers.CharField()
    version = serializers.CharField()
    label = serializers.CharField(help_text="The label jobs record: id plus a digest of the weights.")
    active = serializers.BooleanField()
    retired = serializers.BooleanField()
    implementation = serializers.CharField()
    weights = WeightFileSerializer(many=True)
    packages = serializers.DictField(child=serializers.CharField())
    settings = serializers.DictField()
    settings_hash = serializers.CharField()
    code_commit = serializers.CharField(allow_null=True)
    notes = serializers.CharField()
    dataset = DatasetSerializer(allow_null=True, help_text="The data set it was trained or tuned on; null when not recorded.")
    build = serializers.CharField(allow_null=True, help_text="The build id; null when not recorded.")
    image = serializers.CharField(allow_null=True, help_text="The serving image's tag; null when not recorded.")
    evaluation = serializers.DictField(
        allow_null=True, help_text="The latest `detector_evaluate` result on a labelled photo set (e.g. f1); null until evaluated."
    )
    created_at = serializers.DateTimeField()


class DetectorVersionPageSerializer(_PageSerializer):
    results = DetectorVersionSerializer(many=True)
