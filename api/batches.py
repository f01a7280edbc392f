"""HTTP endpoints of batches: many photos by URL in one request (docs/batches.md). A client sees
only its own batches (others are 404)."""

import json

from django.conf import settings
from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiCallback, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView

from jobs import services as job_services
from jobs.representation import (
    batch_representation,
    batch_submitted_representation,
    image_representation,
)

from .errors import ApiError
from .pagination import JobPagination
from .serializers import (
    BatchCallbackSerializer,
    BatchItemSerializer,
    BatchSerializer,
    BatchSubmitRequestSerializer,
    BatchSubmitSerializer,
    BatchSubmittedSerializer,
)
from .views import _errors

BATCH_CALLBACK_DOC = OpenApiCallback(
    "batch_completed",
    "{$request.body#/callback_url}",
    extend_schema(
        summary="The batch has ended, POSTed once to your callback_url",
        description=(
            "Sent once, when the batch's last item ended (completed, failed, canceled or expired), signed per "
            "Standard Webhooks like a job's callback and retried the same way. Items have no callback of their "
            "own: read their results from `results_url`."
        ),
        request=BatchCallbackSerializer,
        responses={200: OpenApiResponse(description="Received")},
    ),
)


# Room per item: a 2,048-character URL (a presigned one is about 1 KB), a 128-character
# request_id, the options and JSON's quoting; and some for the rest of the body.
ITEM_BYTES = 4096
BODY_OVERHEAD_BYTES = 64 * 1024
# JSON objects and arrays an item may average in the body (its object, its labels, and room for
# braces inside its strings) before the body is refused unparsed.
CONTAINERS_PER_ITEM = 4


def _json_body(request: Request):
    """The JSON body, read here rather than by DRF's parser: a batch of BATCH_MAX_ITEMS items is
    larger than Django's DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB), which guards the other routes.
    Bounded by the batch's own limit instead: 413 beyond it, before it is read whole."""
    limit = settings.BATCH_MAX_ITEMS * ITEM_BYTES + BODY_OVERHEAD_BYTES
    too_large = ApiError("request_too_large", f"A batch's body may have at most {limit} bytes.", status_code=413)
    if request.content_type.split(";")[0].strip().lower() != "application/json":
        raise ApiError("unsupported_media_type", "Send the batch as JSON (Content-Type: application/json).", status_code=415)
    length = request.META.get("CONTENT_LENGTH") or "0"
    if length.isdigit() and int(length) > limit:
        raise too_large
    raw = request._request.read(limit + 1)
    if len(raw) > limit:
        raise too_large
    # Parsed JSON takes many times its text's memory when the text is mostly tiny objects or
    # arrays (40 MB of `{},` is 20 million dicts, about 1 GB). A legitimate item is one object
    # with at most one array (labels): count both before parsing, generously (a brace inside a
    # string counts too), so a body of BATCH_MAX_ITEMS items always passes and a flood never
    # reaches the parser.
    containers = raw.count(b"{") + raw.count(b"[")
    if containers > CONTAINERS_PER_ITEM * settings.BATCH_MAX_ITEMS + 16:
        raise ApiError(
            "too_many_items",
            f"A batch may have at most {settings.BATCH_MAX_ITEMS} items, each one JSON object.",
            field="items",
        )
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: arrays nested thousands deep
        raise ApiError("parse_error", "The body is not valid JSON.") from None


def _first_error(detail, path: str = "") -> tuple[str, object]:
    """The first error of a (nested) DRF error detail and where it is, as ``.labels[1]``."""
    if isinstance(detail, dict) and detail:
        key, value = next(iter(detail.items()))
        if isinstance(key, int):
            path += f"[{key}]"
        elif key != api_settings.NON_FIELD_ERRORS_KEY:
            path += f".{key}"
        return _first_error(value, path)
    if isinstance(detail, list) and detail:
        return _first_error(detail[0], path)
    return path, detail


def _items(raw: list) -> list[job_services.BatchItem]:
    """Every item checked; the first bad one refuses the batch, naming it (``items[3].image_url``)."""
    items = []
    # One serializer for every item: its fields are built (deep-copied) once, not 10,000 times.
    checker = BatchItemSerializer()
    for index, data in enumerate(raw):
        try:
            valid = checker.run_validation(data)
        except serializers.ValidationError as exc:
            where, detail = _first_error(exc.detail)
            raise ApiError(getattr(detail, "code", None) or "invalid", str(detail), field=f"items[{index}]{where}") from None
        items.append(
            job_services.BatchItem(
                request_id=valid["request_id"],
                image_url=valid["image_url"],
                model_version=valid.get("model_version", ""),
                labels=valid.get("labels", []),
                cohort=valid.get("cohort", ""),
            )
        )
    return items


def _batch_body(request: Request, view: APIView, batch) -> dict:
    """The batch, its counts, and the page of its items the query asks for (?page=, ?page_size=)."""
    paginator = JobPagination()
    page = paginator.paginate_queryset(job_services.batch_items(batch_id=batch.id).prefetch_related("faces"), request, view=view)
    body = batch_representation(batch, counts=job_services.batch_counts(batch_id=batch.id))
    body["items"] = [image_representation(image) for image in page]
    body["next"] = paginator.get_next_link()
    return body


class BatchCollectionView(APIView):
    @extend_schema(
        operation_id="batches_submit",
        summary="Submit many photos by URL at once",
        description=(
            "JSON: `items` (1 to BATCH_MAX_ITEMS of {request_id, image_url, model_version?, labels?, cohort?}), "
            "`callback_url?`, `expires_in?`. Checked as a whole: one bad item refuses the batch (400 naming it, "
            "e.g. `items[3].image_url`; a request_id repeated in the batch or used before: 409 "
            "request_id_conflict), and nothing is created. Each item becomes an ordinary job; the batch calls "
            "back once, when its last item ended. The same batch POSTed again (every request_id already the same "
            "item of one batch) answers 200 with that batch."
        ),
        request={"application/json": BatchSubmitRequestSerializer},
        responses={
            202: BatchSubmittedSerializer,
            413: OpenApiResponse(description="The body is larger than BATCH_MAX_ITEMS items can be."),
            415: OpenApiResponse(description="Not JSON."),
            200: OpenApiResponse(BatchSubmittedSerializer, description="These very items were already submitted: the batch."),
            **_errors(400, 401, 409, 429, 503),
        },
        callbacks=[BATCH_CALLBACK_DOC],
    )
    def post(self, request: Request) -> Response:
        data = _json_body(request)
        if not isinstance(data, dict):
            raise ApiError("invalid", "The body must be a JSON object with `items`.", field="items")
        if isinstance(data.get("items"), list):
            # Named here, by index: the serializer's list-of-objects error would not say which.
            for index, item in enumerate(data["items"]):
                if not isinstance(item, dict):
                    raise ApiError("invalid", "Each item must be a JSON object.", field=f"items[{index}]")
        serializer = BatchSubmitSerializer(data=data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        batch, created = job_services.batch_create(
            client=request.user,
            items=_items(data["items"]),
            callback_url=data.get("callback_url", ""),
            expires_in=data.get("expires_in"),
        )
        body = batch_submitted_representation(batch)
        return Response(body, status=status.HTTP_202_ACCEPTED if created else status.HTTP_200_OK, headers={"Location": body["status_url"]})


class BatchDetailView(APIView):
    @extend_schema(
        operation_id="batches_retrieve",
        summary="A batch: its status, counts by item status and a page of its items",
        responses={200: BatchSerializer, **_errors(401, 404, 429)},
    )
    def get(self, request: Request, batch_id: str) -> Response:
        return Response(_batch_body(request, self, job_services.batch_get(client=request.user, batch_id=batch_id)))


class BatchResultsView(APIView):
    @extend_schema(
        operation_id="batches_results",
        summary="Every item of a batch, one JSON object per line",
        description=(
            "application/x-ndjson: each line one job, as GET /api/v1/images/{id}/ returns it, in the order "
            "the items were made; streamed, so a batch of any size is read in constant memory. Items still "
            "running appear as they are now."
        ),
        responses={(200, "application/x-ndjson"): OpenApiResponse(OpenApiTypes.STR), **_errors(401, 404, 429)},
    )
    def get(self, request: Request, batch_id: str):
        batch = job_services.batch_get(client=request.user, batch_id=batch_id)
        lines = (
            json.dumps(image_representation(image), separators=(",", ":")) + "\n" for image in job_services.batch_results(batch_id=batch.id)
        )
        response = StreamingHttpResponse(lines, content_type="application/x-ndjson")
        response["Content-Disposition"] = f'inline; filename="batch-{batch.id}.jsonl"'
        return response


class BatchCancelView(APIView):
    @extend_schema(
        operation_id="batches_cancel",
        summary="Cancel a batch: its queued items end canceled",
        description=(
            "Items not started end `canceled`; items already being detected finish. The batch ends (status "
            "canceled, and its callback) once every item has ended. Again on a canceled batch: the same answer; "
            "on a batch that ended otherwise: 409 batch_finished."
        ),
        request=None,
        responses={200: BatchSerializer, **_errors(401, 404, 409, 429)},
    )
    def post(self, request: Request, batch_id: str) -> Response:
        return Response(_batch_body(request, self, job_services.batch_cancel(client=request.user, batch_id=batch_id)))
