from django.contrib import admin
from django.http import HttpResponsePermanentRedirect, JsonResponse
from django.urls import include, path, re_path
from django.views import defaults
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.permissions import AllowAny

from api.errors import error_body
from api.health import healthz, readyz
from api.metrics import metrics_view
from dashboard.views import dashboard

urlpatterns = [
    # The schema and its UI need no key: they describe the API, they do not reach data.
    path("api/schema/", SpectacularAPIView.as_view(permission_classes=[AllowAny], authentication_classes=[]), name="schema"),
    path(
        "api/docs/",
        SpectacularSwaggerView.as_view(url_name="schema", permission_classes=[AllowAny], authentication_classes=[]),
        name="swagger-ui",
    ),
    path("api/v1/", include("api.urls")),
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    # Prometheus: no API key, limited by METRICS_ALLOWED_NETWORKS (api/metrics.py).
    path("metrics", metrics_view, name="metrics"),
    # Admin pages kept their addresses' shape when the models moved out of the `api` app:
    # /admin/api/image/... now lives at /admin/jobs/image/... (bookmarks keep working).
    re_path(r"^admin/api/(?P<model>[a-z]+)/(?P<rest>.*)$", lambda request, model, rest: _moved_admin_page(request, model, rest)),
    # Staff only, through the admin's login (dashboard/views.py).
    path("dashboard/", dashboard, name="dashboard"),
    path("admin/", admin.site.urls),
]

# Where each model of the former `api` app lives now (see api/migrations/0002).
_MOVED_MODELS = {
    "apiclient": "clients",
    "apikey": "clients",
    "detectorversion": "registry",
    "activedetector": "registry",
    "image": "jobs",
    "face": "jobs",
    "callbackdelivery": "callbacks",
    "callbackattempt": "callbacks",
}


def _moved_admin_page(request, model: str, rest: str):
    app = _MOVED_MODELS.get(model)
    if app is None:
        return handler404(request, None)
    query = f"?{request.META['QUERY_STRING']}" if request.META.get("QUERY_STRING") else ""
    return HttpResponsePermanentRedirect(f"/admin/{app}/{model}/{rest}{query}")


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
