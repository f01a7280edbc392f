from django.contrib import admin
from django.http import JsonResponse
from django.urls import include, path
from django.views import defaults

from api.errors import error_body
from api.health import healthz, readyz

urlpatterns = [
    path("api/v1/", include("api.urls")),
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    path("admin/", admin.site.urls),
]


def _wants_json(request) -> bool:
    # The API and the probes answer JSON even for unknown routes; the admin keeps its HTML pages.
    return request.path.startswith(("/api/", "/healthz", "/readyz"))


def handler404(request, exception):
    if _wants_json(request):
        return JsonResponse(error_body("not_found", "Not found."), status=404)
    return defaults.page_not_found(request, exception)


def handler500(request):
    if _wants_json(request):
        return JsonResponse(error_body("server_error", "Internal server error."), status=500)
    return defaults.server_error(request)
