"""HTTP endpoints. Each validates its input, calls one service or selector, and renders."""

from django.conf import settings
from django.http import HttpResponseRedirect, StreamingHttpResponse
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from . import delivery, selectors, services, storage
from .errors import ApiError
from .models import JobStatus
from .pagination import JobPagination
from .serializers import ImageSubmitSerializer, image_representation, image_submitted_representation


class ImageCollectionView(APIView):
    def post(self, request: Request) -> Response:
        """Submit an image: 202 with the job's id and its status_url (also in Location)."""
        serializer = ImageSubmitSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        upload = data["image"]
        image, created = services.image_job_create(
            upload=upload,
            size=upload.size,
            request_id=data["request_id"],
            callback_url=data.get("callback_url", ""),
            filename=upload.name or "",
        )
        body = image_submitted_representation(image)
        # A repeated submission (same request_id and photo) gets the existing job, as 200.
        code = status.HTTP_202_ACCEPTED if created else status.HTTP_200_OK
        return Response(body, status=code, headers={"Location": body["status_url"]})

    def get(self, request: Request) -> Response:
        """List jobs, newest first; ``?request_id=`` finds the jobs of one client id."""
        queryset = selectors.image_list(request_id=request.query_params.get("request_id"))
        paginator = JobPagination()
        page = paginator.paginate_queryset(queryset, request, view=self)
        return paginator.get_paginated_response([image_representation(image) for image in page])


class ImageDetailView(APIView):
    def get(self, request: Request, image_id: str) -> Response:
        return Response(image_representation(selectors.image_get(image_id=image_id)))


class ImageAnnotatedView(APIView):
    def get(self, request: Request, image_id: str):
        """The annotated JPEG: a redirect to a short-lived presigned URL when the storage server
        is reachable by clients (S3_PUBLIC_ENDPOINT), else the bytes themselves."""
        image = selectors.image_get(image_id=image_id)
        if not image.annotated_key:
            if image.status == JobStatus.FAILED:
                raise ApiError("not_available", "The job failed; there is no annotated image.", status_code=404)
            raise ApiError("not_ready", "The annotated image is not ready yet.", status_code=409)
        if settings.S3_PUBLIC_ENDPOINT:
            return HttpResponseRedirect(storage.storage_presigned_url(key=image.annotated_key))
        try:
            chunks = storage.storage_stream(key=image.annotated_key)
        except storage.ObjectNotFound as exc:
            raise ApiError("not_available", "The annotated image is missing from storage.", status_code=404) from exc
        except storage.StorageError as exc:
            raise ApiError("storage_unavailable", "Storage is unavailable; try again.", status_code=503) from exc
        response = StreamingHttpResponse(chunks, content_type="image/jpeg")
        response["Content-Disposition"] = f'inline; filename="{image.id}.jpg"'
        return response


class ImageRedeliverView(APIView):
    def post(self, request: Request, image_id: str) -> Response:
        """Send a finished job's callback again, as a new delivery: 202 with its webhook id."""
        image = selectors.image_get(image_id=image_id)
        outbox_row = delivery.callback_redeliver(image_id=image.id)
        return Response(
            {"id": str(image.id), "webhook_id": outbox_row.webhook_id, "status": outbox_row.status},
            status=status.HTTP_202_ACCEPTED,
        )
