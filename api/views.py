"""HTTP endpoints. Each validates its input, calls one service or selector, and renders.

Every route needs an API key (api.auth); a client sees only its own jobs (others are 404).
"""

import copy
import datetime as dt
import json
from pathlib import Path

from django.conf import settings
from django.core.files.uploadhandler import FileUploadHandler
from django.http import HttpResponseRedirect, StreamingHttpResponse
from django.utils import timezone
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiCallback, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from jobs import erasure as job_erasure
from jobs import selectors as job_selectors
from jobs import services as job_services
from jobs.representation import image_representation, image_submitted_representation
from registry import artifacts as registry_artifacts
from registry import selectors as registry_selectors

from .auth import IsOperator
from .errors import ApiError
from .pagination import JobPagination
from .serializers import (
    DetectorVersionPageSerializer,
    DetectorVersionSerializer,
    ErrorSerializer,
    ImageListQuerySerializer,
    ImagePageSerializer,
    ImageSerializer,
    ImageSubmitByUrlSerializer,
    ImageSubmitSerializer,
    ImageSubmittedSerializer,
    ModelUploadSerializer,
    RedeliverSerializer,
    detector_version_representation,
)

# Room for the multipart framing and the small fields around the file.
MULTIPART_OVERHEAD_BYTES = 64 * 1024


def _errors(*codes: int) -> dict:
    descriptions = {
        400: "Invalid input; `error.field` names the field.",
        401: "No API key, or an invalid or revoked one.",
        403: "A client's key where an operator's key is needed (`error.code` forbidden).",
        404: "No such job for this client.",
        409: "Conflict; `error.code` says which.",
        410: "Gone: deleted after the retention period (`expired`) or erased on request (`deleted`).",
        413: "The upload or the image is too large.",
        415: "An image format that is not accepted.",
        429: "Rate limit reached; see Retry-After.",
        503: "A dependency (storage) is unavailable; try again after Retry-After seconds.",
    }
    return {code: OpenApiResponse(ErrorSerializer, description=descriptions[code]) for code in codes}


def _paginated(request: Request, view: APIView, queryset, render) -> Response:
    """One page of ``queryset``, each row rendered, in the count/next/previous/results envelope."""
    paginator = JobPagination()
    page = paginator.paginate_queryset(queryset, request, view=view)
    return paginator.get_paginated_response([render(row) for row in page])


def _too_large(limit: int) -> ApiError:
    return ApiError("file_too_large", f"The upload is larger than {limit} bytes.", field="image", status_code=413)


class _MaxSizeUploadHandler(FileUploadHandler):
    """Stops a multipart upload as soon as the file passes MAX_UPLOAD_BYTES, before the rest is
    read (a request without Content-Length, or one that lies about it)."""

    def receive_data_chunk(self, raw_data, start):
        if start + len(raw_data) > settings.MAX_UPLOAD_BYTES:
            raise _too_large(settings.MAX_UPLOAD_BYTES)
        return raw_data

    def file_complete(self, file_size):
        return None


class _ArtifactUploadHandler(FileUploadHandler):
    """Streams a model upload's ``artifact`` part to a temporary file, hashing it as it goes and
    stopping past MODEL_ARTIFACT_MAX_BYTES: the bytes are never held whole in memory and are
    read once. Other file parts (a manifest sent as a file) may have at most MANIFEST_MAX_BYTES
    and go on to Django's own handlers."""

    MANIFEST_MAX_BYTES = 1024 * 1024

    def new_file(self, field_name, file_name, content_type, content_length, charset=None, content_type_extra=None):
        super().new_file(field_name, file_name, content_type, content_length, charset, content_type_extra)
        self.file = None
        if field_name == "artifact":
            import hashlib

            from django.core.files.uploadedfile import TemporaryUploadedFile
            from django.core.files.uploadhandler import StopFutureHandlers

            self.file = TemporaryUploadedFile(file_name or "model.onnx", content_type, 0, charset, content_type_extra)
            self.digest = hashlib.sha256()
            raise StopFutureHandlers()

    def receive_data_chunk(self, raw_data, start):
        if self.file is None:
            if start + len(raw_data) > self.MANIFEST_MAX_BYTES:
                raise ApiError(
                    "file_too_large", f"A part other than the artifact is larger than {self.MANIFEST_MAX_BYTES} bytes.", status_code=413
                )
            return raw_data
        if start + len(raw_data) > settings.MODEL_ARTIFACT_MAX_BYTES:
            raise _artifact_too_large()
        self.digest.update(raw_data)
        self.file.write(raw_data)
        return None

    def file_complete(self, file_size):
        if self.file is None:
            return None
        self.file.seek(0)
        self.file.size = file_size
        self.file.sha256 = self.digest.hexdigest()
        return self.file

    def upload_interrupted(self):
        # The client went away mid-upload: the partial file goes now (nothing else was stored).
        if getattr(self, "file", None) is not None:
            self.file.close()


def _artifact_too_large() -> ApiError:
    return ApiError(
        "file_too_large", f"The model file is larger than {settings.MODEL_ARTIFACT_MAX_BYTES} bytes.", field="artifact", status_code=413
    )


CALLBACK_DOC = OpenApiCallback(
    "result",
    "{$request.body#/callback_url}",
    extend_schema(
        summary="The job's result, POSTed to your callback_url",
        description=(
            "Sent once the job is completed, failed, canceled or expired, signed per Standard Webhooks (headers "
            "webhook-id, webhook-timestamp, webhook-signature). Answer 2xx. 408, 429, 5xx and "
            "network errors are retried with backoff; other answers end the delivery. The body is "
            "the job as GET returns it, except its `callback` block: that describes the delivery "
            "carrying the body, as it was made (status pending, webhook_id equal to the webhook-id "
            "header, no attempts); retries send the same bytes. GET the job for the delivery's "
            "live state."
        ),
        request=ImageSerializer,
        responses={200: OpenApiResponse(description="Received")},
    ),
)


def _job_link(operation_id: str, description: str) -> dict:
    return {"operationId": operation_id, "parameters": {"image_id": "$response.body#/id"}, "description": description}


# OpenAPI links from a submission's answer to what a client does next with the job: a reader (or
# schemathesis' stateful tests) can follow the id. drf-spectacular has no helper for links.
SUBMITTED_LINKS = {
    "GetImage": _job_link("images_retrieve", "The job: its status, faces and callback state."),
    "GetAnnotatedImage": _job_link("images_annotated", "The annotated JPEG, once the job is completed."),
    "RedeliverImage": _job_link("images_redeliver", "Send the finished job's callback again."),
    "CancelImage": _job_link("images_cancel", "Cancel the job while it is queued."),
    "ListImagesByRequestId": {
        "operationId": "images_list",
        "parameters": {"request_id": "$response.body#/request_id"},
        "description": "Your jobs with this request_id.",
    },
}


class _SubmitSchema(AutoSchema):
    """AutoSchema, plus SUBMITTED_LINKS on the submission's 202 and 200 answers."""

    def get_operation(self, *args, **kwargs):
        operation = super().get_operation(*args, **kwargs)
        if operation is not None and self.method == "POST":
            for code in ("200", "202"):
                operation["responses"][code]["links"] = copy.deepcopy(SUBMITTED_LINKS)
        return operation


class ImageCollectionView(APIView):
    schema = _SubmitSchema()

    @extend_schema(
        operation_id="images_submit",
        summary="Submit a photo for face detection",
        description=(
            "The photo is uploaded (`image`, multipart) or given by URL (`image_url`, multipart or a JSON body), exactly "
            "one of them. A photo by URL is not fetched now: the job is accepted at once and a worker fetches it before "
            "detecting. `expires_in`: a job not started within that many seconds ends `expired`."
        ),
        request={"multipart/form-data": ImageSubmitSerializer, "application/json": ImageSubmitByUrlSerializer},
        responses={
            202: ImageSubmittedSerializer,
            200: OpenApiResponse(
                ImageSubmittedSerializer, description="This request_id was already submitted with this photo: the existing job."
            ),
            **_errors(400, 401, 409, 413, 415, 429, 503),
        },
        callbacks=[CALLBACK_DOC],
    )
    def post(self, request: Request) -> Response:
        """202 with the job's id and status_url (also in Location). Idempotent per request_id."""
        content_length = request.META.get("CONTENT_LENGTH") or "0"
        if content_length.isdigit() and int(content_length) > settings.MAX_UPLOAD_BYTES + MULTIPART_OVERHEAD_BYTES:
            raise _too_large(settings.MAX_UPLOAD_BYTES)  # refused before a byte of the body is read
        request._request.upload_handlers.insert(0, _MaxSizeUploadHandler(request._request))

        # One serializer for both bodies: in JSON an `image` is no file, and is refused as such.
        serializer = ImageSubmitSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        upload = data.get("image")
        expires_in = data.get("expires_in")
        image, created = job_services.image_job_create(
            client=request.user,
            upload=upload,
            size=upload.size if upload is not None else 0,
            image_url=data.get("image_url"),
            expires_at=timezone.now() + dt.timedelta(seconds=expires_in) if expires_in else None,
            request_id=data["request_id"],
            callback_url=data.get("callback_url", ""),
            filename=(upload.name or "") if upload is not None else "",
            model_version=data.get("model_version", ""),
            cohort=data.get("cohort", ""),
            labels=data.get("labels", []),
        )
        body = image_submitted_representation(image)
        # A repeated submission (same request_id and photo) gets the existing job, as 200.
        code = status.HTTP_202_ACCEPTED if created else status.HTTP_200_OK
        return Response(body, status=code, headers={"Location": body["status_url"]})

    @extend_schema(
        operation_id="images_list",
        summary="List your jobs, newest first",
        parameters=[ImageListQuerySerializer],
        responses={200: ImagePageSerializer, **_errors(400, 401, 429)},
    )
    def get(self, request: Request) -> Response:
        query = ImageListQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        queryset = job_selectors.image_list(client=request.user, request_id=query.validated_data.get("request_id"))
        return _paginated(request, self, queryset, image_representation)


class ImageDetailView(APIView):
    @extend_schema(
        operation_id="images_retrieve",
        summary="A job: its status, faces and callback state",
        responses={200: ImageSerializer, **_errors(401, 404, 429)},
    )
    def get(self, request: Request, image_id: str) -> Response:
        return Response(image_representation(job_selectors.image_get(client=request.user, image_id=image_id)))

    @extend_schema(
        operation_id="images_delete",
        summary="Erase a job: its photo, annotated image and detections",
        description=(
            "Deletes the photo and the annotated image from storage at once, and the detections; "
            "a pending callback is cancelled. A tombstone stays (id, request_id, times, status "
            "`deleted`): GET still answers with it, and submitting its request_id again returns it "
            "without storing anything. Repeating the DELETE answers the same."
        ),
        request=None,
        responses={200: ImageSerializer, **_errors(401, 404, 429, 503)},
    )
    def delete(self, request: Request, image_id: str) -> Response:
        image = job_selectors.image_get(client=request.user, image_id=image_id)
        job_erasure.image_job_erase(image_id=image.id)
        return Response(image_representation(job_selectors.image_get(client=request.user, image_id=image_id)))


class ImageAnnotatedView(APIView):
    @extend_schema(
        operation_id="images_annotated",
        summary="The annotated JPEG",
        description=(
            "The photo with the faces drawn on it: a 302 to a short-lived presigned URL when the "
            "storage server is public, otherwise the JPEG itself. 410 once it was deleted after "
            "the retention period or the job was erased."
        ),
        responses={
            (200, "image/jpeg"): OpenApiResponse(OpenApiTypes.BINARY, description="The JPEG"),
            302: OpenApiResponse(description="Redirect to a presigned URL"),
            **_errors(401, 404, 409, 410, 429, 503),
        },
    )
    def get(self, request: Request, image_id: str):
        # The selector decides (failed: 404, not drawn yet: 409, storage down: 503); this renders.
        annotated = job_selectors.image_annotated_get(client=request.user, image_id=image_id)
        if annotated.url is not None:
            return HttpResponseRedirect(annotated.url)
        response = StreamingHttpResponse(annotated.chunks, content_type="image/jpeg")
        response["Content-Disposition"] = f'inline; filename="{annotated.image.id}.jpg"'
        return response


class ImageRedeliverView(APIView):
    @extend_schema(
        operation_id="images_redeliver",
        summary="Send a finished job's callback again",
        request=None,
        responses={202: RedeliverSerializer, **_errors(401, 404, 409, 429)},
    )
    def post(self, request: Request, image_id: str) -> Response:
        """A new delivery (new webhook-id) of the job's current representation."""
        image = job_selectors.image_get(client=request.user, image_id=image_id)
        outbox_row = job_services.image_job_redeliver(image_id=image.id)
        return Response(
            {"id": str(image.id), "webhook_id": outbox_row.webhook_id, "status": outbox_row.status},
            status=status.HTTP_202_ACCEPTED,
        )


class ImageCancelView(APIView):
    @extend_schema(
        operation_id="images_cancel",
        summary="Cancel a job that has not started",
        description=(
            "A queued job ends `canceled` (error code `canceled`) and is called back like any finished job. "
            "409 `job_already_started` when it is being detected (it finishes), `job_finished` when it has ended."
        ),
        request=None,
        responses={200: ImageSerializer, **_errors(401, 404, 409, 429)},
    )
    def post(self, request: Request, image_id: str) -> Response:
        image = job_selectors.image_get(client=request.user, image_id=image_id)
        return Response(image_representation(job_services.image_job_cancel(image_id=image.id)))


class ModelCollectionView(APIView):
    @extend_schema(
        operation_id="models_list",
        summary="The registered detector versions",
        responses={200: DetectorVersionPageSerializer, **_errors(401, 429)},
    )
    def get(self, request: Request) -> Response:
        active_id = registry_selectors.detector_version_active_id()
        return _paginated(
            request, self, registry_selectors.detector_version_list(), lambda v: detector_version_representation(v, active_id=active_id)
        )

    @extend_schema(
        operation_id="models_upload",
        summary="Register a version from your own model file (operators)",
        description=(
            "Multipart: `artifact` (an Ultralytics ONNX export) and `manifest` (JSON). The file is checked "
            "before anything is stored (loaded in a separate process with a time and memory limit, its input "
            "and output shapes matched against a supported layout, one inference on a blank image); a refusal "
            "is a 400 whose `error.code` names the problem (artifact_not_onnx, artifact_external_data, "
            "artifact_custom_operators, artifact_input, artifact_output, artifact_labels, artifact_sizes, "
            "artifact_does_not_run, ...) and leaves nothing behind. Stored in the bucket under its sha256. "
            "The same id with the same file and manifest: 200 with the version; with other ones: 409."
        ),
        request={"multipart/form-data": ModelUploadSerializer},
        responses={
            201: DetectorVersionSerializer,
            200: OpenApiResponse(
                DetectorVersionSerializer, description="This version was already registered with this very file: the version."
            ),
            **_errors(400, 401, 403, 409, 413, 415, 429, 503),
        },
    )
    def post(self, request: Request) -> Response:
        content_length = request.META.get("CONTENT_LENGTH") or "0"
        if content_length.isdigit() and int(content_length) > settings.MODEL_ARTIFACT_MAX_BYTES + MULTIPART_OVERHEAD_BYTES:
            raise _artifact_too_large()  # refused before a byte of the body is read
        request._request.upload_handlers = [_ArtifactUploadHandler(request._request), *request._request.upload_handlers]
        serializer = ModelUploadSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        artifact = serializer.validated_data["artifact"]
        try:
            manifest = json.loads(serializer.validated_data["manifest"])
        except ValueError:
            raise ApiError("invalid_manifest", "The manifest is not JSON.", field="manifest") from None
        try:
            version, created = registry_artifacts.detector_version_upload(
                manifest=manifest, path=Path(artifact.temporary_file_path()), sha256=getattr(artifact, "sha256", None), size=artifact.size
            )
        finally:
            artifact.close()  # the temporary file goes
        body = detector_version_representation(version, active_id=registry_selectors.detector_version_active_id())
        return Response(body, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)

    def get_permissions(self):
        # Anyone with a key reads the versions; only an operator's key registers one.
        if self.request is not None and self.request.method == "POST":
            return [IsAuthenticated(), IsOperator()]
        return super().get_permissions()


class ModelDetailView(APIView):
    @extend_schema(
        operation_id="models_retrieve",
        summary="One detector version",
        responses={200: DetectorVersionSerializer, **_errors(401, 404, 429)},
    )
    def get(self, request: Request, version_id: str) -> Response:
        version = registry_selectors.detector_version_get(version_id=version_id)
        return Response(detector_version_representation(version, active_id=registry_selectors.detector_version_active_id()))
