"""Input validation for the API, the representation of detector versions, and the serializers
that document in the schema the shapes jobs/representation.py builds."""

import re
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.validators import RegexValidator
from rest_framework import serializers
from rest_framework.utils import html

from callbacks.models import DeliveryStatus
from callbacks.urlpolicy import UrlRefused, check_callback_url
from jobs.fetch import image_url_check
from jobs.models import JobStatus
from jobs.representation import iso
from jobs.services import LABEL_MAX_LENGTH, LABEL_PATTERN, MAX_LABELS
from rollouts.models import Variant

CALLBACK_URL_MAX_LENGTH = 2048
IMAGE_URL_MAX_LENGTH = 2048


# The request_id rule, as one regular expression: the OpenAPI schema publishes it as the field's
# `pattern` (drf-spectacular copies it from the validator below) and the validator enforces this
# very compiled pattern, so schema and API cannot drift. It is written for every reader at once:
# Python's `re` (the server; hypothesis and schemathesis), ECMA-262 with or without the `u` flag
# (OpenAPI's dialect) and Rust's regex (jsonschema-rs, which schemathesis validates with): only
# \uXXXX escapes, no \s (whose set differs between them), no length in the pattern (minLength and
# maxLength count code points; ECMA without `u` counts UTF-16 units). Controls are C0, DEL and C1
# (category Cc). Bidirectional formatting characters (the Bidi_Control property, a fixed set) are
# refused too, as they were: they make an id display as another ("abc\u202etxt.exe" shows as
# "abcexe.txt"; tests/api/test_hostile.py). The whitespace class is exactly the non-control
# characters for which Python's str.isspace() is true, so "not only whitespace" is the old
# `value.strip()` test.
#
# Why not keep str.isprintable(): it refuses Cf, Co, Cn (unassigned), Zl, Zp and Zs but the space,
# sets that grow with each Unicode version, so a pattern for it would be thousands of ranges and
# still disagree with clients on another Unicode version. This rule accepts everything
# isprintable() accepted (tests/api/test_read.py checks every code point) and adds the rest of
# Unicode but controls and bidi formatting; nothing accepted before is refused now.
#
# Lone surrogates: Rust has none to name (a pattern with \ud800 does not compile there), and none
# can arrive: the value travels as UTF-8 in a query or a form, which Django decodes with
# replacement. The validator still refuses a str that cannot be encoded, for a caller in Python.
_CONTROL = r"\u0000-\u001f\u007f-\u009f"
_BIDI_CONTROL = r"\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
_WHITESPACE = r" \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
REQUEST_ID_PATTERN = rf"^(?![{_WHITESPACE}]*$)[^{_CONTROL}{_BIDI_CONTROL}]+$"
REQUEST_ID_RE = re.compile(REQUEST_ID_PATTERN)
REQUEST_ID_MAX_LENGTH = 128
_REFUSED_IN_WORDS = (
    "control characters (U+0000 to U+001F, U+007F to U+009F) or bidirectional formatting "
    "characters (U+061C, U+200E, U+200F, U+202A to U+202E, U+2066 to U+2069)"
)
REQUEST_ID_HELP = (
    "Your id for the job, kept exactly as given: 1 to 128 characters, not all whitespace, without "
    f"{_REFUSED_IN_WORDS}. It travels as UTF-8, so it holds no lone surrogates."
)


class RequestIdValidator(RegexValidator):
    """REQUEST_ID_RE over the whole value. A RegexValidator, so that drf-spectacular publishes the
    pattern; fullmatch, not RegexValidator's search, because Python's `$` also matches before a
    final newline (ECMA's does not)."""

    def __init__(self, name: str = "request_id") -> None:
        super().__init__(REQUEST_ID_RE)
        self.name = name  # the field the messages name (cohort follows the same rule)

    def __call__(self, value: str) -> None:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise serializers.ValidationError(f"{self.name} must be UTF-8 text (no lone surrogates).", code="invalid") from None
        if self.regex.fullmatch(value) is not None:
            return
        if not value.strip():  # the wording only; the pattern decided
            raise serializers.ValidationError(f"{self.name} may not be blank.", code="blank")
        raise serializers.ValidationError(f"{self.name} may not contain {_REFUSED_IN_WORDS}.", code="invalid")


class RequestIdField(serializers.CharField):
    def get_value(self, dictionary):
        # DRF reads an empty value of an optional field in a query or form as "not given"; an
        # empty ?request_id= is a blank request_id (400), as the schema's minLength says.
        if html.is_html_input(dictionary) and dictionary.get(self.field_name) == "":
            return ""
        return super().get_value(dictionary)


def request_id_field(*, name: str = "request_id", help_text: str = REQUEST_ID_HELP, **kwargs) -> serializers.CharField:
    """The client's id of a job (REQUEST_ID_HELP), kept as given; ``name``: another field with
    the same rule (cohort)."""
    return RequestIdField(
        max_length=REQUEST_ID_MAX_LENGTH,
        trim_whitespace=False,
        validators=[RequestIdValidator(name)],
        help_text=help_text,
        **kwargs,
    )


# The upload's `labels`: label names (detection.labels.LABEL_PATTERN) separated by commas, no
# spaces; empty (allow_blank: the schema's other branch) is "every label". Published as the
# field's pattern (ECMA and Rust read it too: a non-capturing group is all it adds) and enforced
# by the validator below, as for request_id.
_LABEL = LABEL_PATTERN.removeprefix("^").removesuffix("$")
LABELS_PATTERN = rf"^{_LABEL}(?:,{_LABEL})*$"
LABELS_RE = re.compile(LABELS_PATTERN)
LABELS_MAX_LENGTH = MAX_LABELS * (LABEL_MAX_LENGTH + 1) - 1  # MAX_LABELS of the longest names
LABELS_HELP = (
    "Keep only detections with these labels: label names separated by commas, without spaces (e.g. "
    f"`person,cat`), each lower-case ASCII letters, digits and underscores, starting with a letter, 1 to "
    f"{LABEL_MAX_LENGTH} characters; repeats are dropped; at most {MAX_LABELS}. Each must be a label the job's "
    "model version returns (its `labels` in /api/v1/models/). Default: every label."
)


class LabelsValidator(RegexValidator):
    """LABELS_RE over the whole value (fullmatch: Python's `$` also matches before a final
    newline, ECMA's does not). A RegexValidator, so that drf-spectacular publishes the pattern."""

    def __init__(self) -> None:
        super().__init__(LABELS_RE)

    def __call__(self, value: str) -> None:
        if self.regex.fullmatch(value) is None:
            raise serializers.ValidationError(
                "labels must be label names separated by commas, without spaces (e.g. person,cat): each lower-case "
                f"ASCII letters, digits and underscores, starting with a letter, at most {LABEL_MAX_LENGTH} characters.",
                code="invalid",
            )


class LabelsField(serializers.CharField):
    """`labels` as a comma-separated string (multipart and JSON) or, in a JSON body, also as a
    list of names, the form a batch item takes: one client may send both the same way."""

    def to_internal_value(self, data):
        if isinstance(data, list) and all(isinstance(name, str) for name in data):
            data = ",".join(data)
        return super().to_internal_value(data)


class ImageListQuerySerializer(serializers.Serializer):
    """The query of GET /api/v1/images/."""

    request_id = request_id_field(required=False)


IMAGE_URL_HELP = (
    "The photo's http(s) URL, instead of `image`: the job is accepted at once and a worker fetches the photo "
    "before detecting it (under the same size and pixel limits as uploads). The host must resolve to a public "
    "address; the job fails with `image_fetch_failed`, `image_too_large`, `image_url_refused` or "
    "`unsupported_image` when the photo cannot be had."
)


class _ImageSubmitFields(serializers.Serializer):
    """What a submission by URL and an upload share. The image's content is checked by the service."""

    request_id = request_id_field()
    callback_url = serializers.URLField(max_length=CALLBACK_URL_MAX_LENGTH, required=False, allow_blank=True)
    model_version = serializers.CharField(
        max_length=64, required=False, allow_blank=True, help_text="A detector version id (see /api/v1/models/); default: the active one."
    )
    cohort = request_id_field(
        name="cohort",
        required=False,
        help_text="Who the photo is for (a user, device or camera id): during a rollout, jobs of one cohort always get "
        "the same model version. Default: your API client. Not used when model_version is given. The same characters "
        f"as request_id: 1 to 128, not all whitespace, without {_REFUSED_IN_WORDS}.",
    )
    labels = LabelsField(
        required=False,
        allow_blank=True,
        trim_whitespace=False,
        max_length=LABELS_MAX_LENGTH,
        validators=[LabelsValidator()],
        help_text=LABELS_HELP + " In a JSON body a list of names is taken too.",
    )

    expires_in = serializers.IntegerField(
        required=False,
        min_value=1,
        help_text="Seconds: a job not started within this time ends `expired` (and is called back). Default: never.",
    )

    def validate_expires_in(self, value: int) -> int:
        if value > settings.JOB_EXPIRES_IN_MAX:
            raise serializers.ValidationError(f"expires_in may be at most {settings.JOB_EXPIRES_IN_MAX} seconds.", code="max_value")
        return value

    def validate_labels(self, value: str) -> list[str]:
        """The label names, without repeats (first one first)."""
        labels = list(dict.fromkeys(value.split(","))) if value else []
        if len(labels) > MAX_LABELS:
            raise serializers.ValidationError(f"At most {MAX_LABELS} labels; {len(labels)} were given.", code="too_many_labels")
        return labels

    def validate_callback_url(self, value: str) -> str:
        if not value:
            return value
        try:
            check_callback_url(value)
        except UrlRefused as exc:
            raise serializers.ValidationError(str(exc), code=exc.code) from exc
        return value


def _image_url_field() -> serializers.URLField:
    return serializers.URLField(max_length=IMAGE_URL_MAX_LENGTH, required=False, help_text=IMAGE_URL_HELP)


class ImageSubmitSerializer(_ImageSubmitFields):
    """The fields of POST /api/v1/images/ (multipart): exactly one of ``image`` and ``image_url``."""

    image = serializers.FileField(allow_empty_file=False, use_url=False, required=False, help_text="The photo, uploaded.")
    image_url = _image_url_field()

    field_order = ("image", "image_url")

    def validate_image_url(self, value: str) -> str:
        return _image_url_checked(value)

    def validate(self, attrs: dict) -> dict:
        if "image" in attrs and "image_url" in attrs:
            raise serializers.ValidationError({"image_url": "Give either image or image_url, not both."}, code="invalid")
        if "image" not in attrs and "image_url" not in attrs:
            raise serializers.ValidationError({"image": "Give the photo as image (a file) or image_url."}, code="required")
        return attrs


class ImageSubmitByUrlSerializer(_ImageSubmitFields):
    """The fields of POST /api/v1/images/ as a JSON body: the photo by ``image_url``."""

    image_url = serializers.URLField(max_length=IMAGE_URL_MAX_LENGTH, help_text=IMAGE_URL_HELP)

    def validate_image_url(self, value: str) -> str:
        return _image_url_checked(value)


def _image_url_checked(value: str) -> str:
    """Only a URL the workers may fetch (jobs/fetch.py's rule: public addresses, http(s))."""
    try:
        image_url_check(value)
    except UrlRefused as exc:
        raise serializers.ValidationError(str(exc), code=exc.code) from exc
    return value


def _json_types(data, *, strings=(), string_lists=(), integers=()) -> None:
    """Refuse a JSON body's field of the wrong type (DRF would read 0 as "0", "5" or 5.0 as 5)."""
    if not isinstance(data, dict):
        return
    for name in strings:
        if name in data and not isinstance(data[name], str):
            raise serializers.ValidationError({name: ["Must be a string."]}, code="invalid")
    for name in string_lists:
        if name in data and not (isinstance(data[name], list) and all(isinstance(v, str) for v in data[name])):
            raise serializers.ValidationError({name: ["Must be a list of strings."]}, code="invalid")
    for name in integers:
        if name in data and (isinstance(data[name], bool) or not isinstance(data[name], int)):
            raise serializers.ValidationError({name: ["Must be an integer."]}, code="invalid")


class BatchItemSerializer(serializers.Serializer):
    """One item of POST /api/v1/batches/: a photo by URL and the options of an upload."""

    request_id = request_id_field()
    image_url = serializers.URLField(
        max_length=CALLBACK_URL_MAX_LENGTH, help_text="The photo, fetched by the worker (http or https; e.g. a presigned S3 URL)."
    )
    model_version = serializers.CharField(
        max_length=64, required=False, allow_blank=True, help_text="A detector version id (see /api/v1/models/); default: the active one."
    )
    labels = serializers.ListField(
        child=serializers.CharField(max_length=LABEL_MAX_LENGTH),
        required=False,
        max_length=MAX_LABELS,
        help_text="Keep only detections with these labels (a list of label names); default: every label.",
    )
    cohort = request_id_field(name="cohort", required=False, help_text="As for POST /api/v1/images/.")

    def to_internal_value(self, data):
        # JSON has types: a number where a string belongs is refused, not read as its digits.
        _json_types(data, strings=("request_id", "image_url", "model_version", "cohort"), string_lists=("labels",))
        return super().to_internal_value(data)

    def validate_image_url(self, value: str) -> str:
        """The rule of POST /api/v1/images/ (_image_url_checked), its verdict kept per scheme and
        host for this serializer: the view checks every item of a batch with one instance, and a
        batch's URLs mostly share a host (a bucket), which is then resolved once, not 10,000 times."""
        parts = urlsplit(value)
        origin = (parts.scheme.lower(), parts.netloc.lower())
        verdicts = self.__dict__.setdefault("_origin_verdicts", {})
        if origin not in verdicts:
            try:
                image_url_check(value)
                verdicts[origin] = None
            except UrlRefused as exc:
                verdicts[origin] = exc
        refused = verdicts[origin]
        if refused is not None:
            raise serializers.ValidationError(str(refused), code=refused.code)
        return value


class BatchSubmitSerializer(serializers.Serializer):
    """The body of POST /api/v1/batches/ (JSON). The items are checked one by one by the view
    (BatchItemSerializer), so that an error names the item: ``items[3].image_url``."""

    items = serializers.ListField(child=serializers.DictField(), allow_empty=False, help_text="1 to BATCH_MAX_ITEMS items.")
    callback_url = serializers.URLField(max_length=CALLBACK_URL_MAX_LENGTH, required=False, allow_blank=True)
    expires_in = serializers.IntegerField(
        required=False, min_value=1, help_text="Seconds: items not started by then end `expired` (at most JOB_EXPIRES_IN_MAX)."
    )

    def to_internal_value(self, data):
        _json_types(data, strings=("callback_url",), integers=("expires_in",))
        return super().to_internal_value(data)

    def validate_items(self, value: list) -> list:
        limit = settings.BATCH_MAX_ITEMS
        if len(value) > limit:
            raise serializers.ValidationError(f"A batch may have at most {limit} items; this one has {len(value)}.", code="too_many_items")
        return value

    def validate_expires_in(self, value: int) -> int:
        longest = settings.JOB_EXPIRES_IN_MAX
        if value > longest:
            raise serializers.ValidationError(f"expires_in may be at most {longest} seconds.", code="max_value")
        return value

    def validate_callback_url(self, value: str) -> str:
        return ImageSubmitSerializer.validate_callback_url(self, value)


class BatchSubmitRequestSerializer(BatchSubmitSerializer):
    """The schema's view of POST /api/v1/batches/: the items' own fields (the view checks them one
    by one, BatchItemSerializer, to name the item at fault)."""

    items = BatchItemSerializer(many=True, allow_empty=False, max_length=settings.BATCH_MAX_ITEMS, help_text="1 to BATCH_MAX_ITEMS items.")


class BatchSubmittedSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    status_url = serializers.URLField()
    results_url = serializers.URLField(help_text="Every item's job, one JSON object per line (application/x-ndjson).")
    item_count = serializers.IntegerField()
    status = serializers.ChoiceField(["running", "completed", "canceled"])


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
        # The labels it can return ("face" for face models): what an upload's `labels` may ask for.
        "labels": list(version.labels),
        "evaluation": version.evaluation,
        # The uploaded model file, when the version has one.
        "artifact": {
            "sha256": version.artifact_sha256,
            "size": version.artifact_size,
            "format": version.artifact_format,
            "input_size": list(version.input_size or []),
            "label_map": dict(version.label_map or {}),
        }
        if version.artifact_sha256
        else None,
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


def _point(help_text: str):
    return serializers.ListField(child=serializers.FloatField(), min_length=2, max_length=2, required=False, help_text=help_text)


class LandmarksSerializer(serializers.Serializer):
    """The points the face model has, by name, [x, y] in the photo's pixels; "left" is the
    image's left. MTCNN gives the first five, BlazeFace left_eye, right_eye, nose, mouth and the
    ears. A point a model does not have is absent, never invented."""

    left_eye = _point("MTCNN, BlazeFace")
    right_eye = _point("MTCNN, BlazeFace")
    nose = _point("MTCNN, BlazeFace")
    mouth_left = _point("MTCNN")
    mouth_right = _point("MTCNN")
    mouth = _point("BlazeFace: the mouth's centre")
    left_ear = _point("BlazeFace: the ear tragion on the image's left")
    right_ear = _point("BlazeFace: the ear tragion on the image's right")


class FaceSerializer(serializers.Serializer):
    box = BoxSerializer()
    confidence = serializers.FloatField(min_value=0, max_value=1)
    landmarks = LandmarksSerializer()


class DetectionSerializer(serializers.Serializer):
    """One detection of any label: a face's fields plus its label; landmarks are the points the
    model has, by name (the five of a face for face models; usually none for other objects)."""

    label = serializers.CharField(help_text='What was detected: "face" for face models, the class name otherwise (e.g. "cat").')
    box = BoxSerializer()
    confidence = serializers.FloatField(min_value=0, max_value=1)
    landmarks = serializers.DictField(child=serializers.ListField(child=serializers.FloatField(), min_length=2, max_length=2))


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
    """A callback delivery. In GET responses: the job's latest delivery, as it is now. In a
    callback body: the delivery carrying that body, as it was made (status pending, webhook_id
    equal to the webhook-id header, no attempts, delivered_at and next_attempt_at null)."""

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

    image_url = serializers.URLField(allow_null=True, help_text="The URL the photo was submitted by; null for an upload.")
    expires_at = serializers.DateTimeField(
        allow_null=True, help_text="A job not started by then ends `expired` (from `expires_in`); null: never."
    )
    batch_id = serializers.UUIDField(allow_null=True, help_text="The batch this job is an item of; null for a job on its own.")
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    model_version = serializers.CharField(allow_null=True)
    rollout = JobRolloutSerializer(
        allow_null=True, help_text="The rollout that chose this job's model version, and the side it got; null outside a rollout."
    )
    width = serializers.IntegerField(allow_null=True)
    height = serializers.IntegerField(allow_null=True)
    face_count = serializers.IntegerField(allow_null=True, help_text='How many detections are faces (label "face"); null until completed.')
    faces = FaceSerializer(many=True, help_text='The detections labelled "face", most confident first.')
    detection_count = serializers.IntegerField(allow_null=True, help_text="How many detections of any label; null until completed.")
    detections = DetectionSerializer(many=True, help_text="Every detection, of any label, most confident first.")
    labels = serializers.ListField(
        child=serializers.CharField(),
        allow_null=True,
        help_text="The labels the submission asked to keep (detections of others were dropped); null: every label.",
    )
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


class ArtifactSerializer(serializers.Serializer):
    sha256 = serializers.CharField(help_text="Its sha256: its name in the bucket (models/sha256/<digest>) and its one weight.")
    size = serializers.IntegerField(help_text="Bytes.")
    format = serializers.CharField(help_text='"onnx".')
    input_size = serializers.ListField(child=serializers.IntegerField(), help_text="The network's input, [width, height].")
    label_map = serializers.DictField(
        child=serializers.CharField(),
        help_text='The model\'s class names that were changed to fit the label pattern, e.g. {"traffic light": "traffic_light"}.',
    )


class ModelUploadSerializer(serializers.Serializer):
    artifact = serializers.FileField(help_text="The model file: an Ultralytics ONNX export (`yolo export model=best.pt format=onnx`).")
    manifest = serializers.CharField(
        help_text=(
            'JSON: {"name", "version", "implementation": "yolo-onnx", "settings": {"min_confidence", "iou", ...}, '
            'and optionally "labels" (class names in class order, when the model has no names metadata), "notes", '
            '"dataset": {"tag", "sha256"}, "build", "image"}.'
        )
    )


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
    labels = serializers.ListField(
        child=serializers.CharField(),
        help_text=(
            'The labels its detections can have ("face" for face models; class names otherwise): what a submission\'s `labels` may ask for.'
        ),
    )
    evaluation = serializers.DictField(
        allow_null=True, help_text="The latest `detector_evaluate` result on a labelled photo set (e.g. f1); null until evaluated."
    )
    artifact = ArtifactSerializer(allow_null=True, help_text="The uploaded model file; null for versions whose weights ship in a package.")
    created_at = serializers.DateTimeField()


class DetectorVersionPageSerializer(_PageSerializer):
    results = DetectorVersionSerializer(many=True)


class BatchSerializer(serializers.Serializer):
    """A batch, as GET returns it: counts by item status and a page of its items."""

    id = serializers.UUIDField()
    status = serializers.ChoiceField(
        ["running", "completed", "canceled"], help_text="running until every item has ended; then completed, or canceled."
    )
    item_count = serializers.IntegerField()
    counts = serializers.DictField(child=serializers.IntegerField(), help_text="Items by status (statuses with none left out).")
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField(allow_null=True)
    canceled_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    callback_url = serializers.URLField(allow_null=True)
    status_url = serializers.URLField()
    results_url = serializers.URLField()
    items = ImageSerializer(many=True, help_text="A page of its items, in the order they were made (?page=, ?page_size=).")
    next = serializers.URLField(allow_null=True, help_text="The next page of items; null on the last.")


class BatchCallbackSerializer(serializers.Serializer):
    """The body of a batch's callback, sent once when its last item ended."""

    type = serializers.ChoiceField(["batch.completed"])
    batch_id = serializers.UUIDField()
    status = serializers.ChoiceField(["completed", "canceled"])
    item_count = serializers.IntegerField()
    counts = serializers.DictField(child=serializers.IntegerField())
    results_url = serializers.URLField()
    finished_at = serializers.DateTimeField()
