from django.apps import AppConfig


class ApiConfig(AppConfig):
    """HTTP only: views, serializers, error shape, authentication, throttles, schema, probes. Its
    migrations are the history of the tables the domain apps now own (see 0002)."""

    name = "api"
    verbose_name = "HTTP API"

    def ready(self) -> None:
        from . import schema  # noqa: F401  (registers the API key scheme with drf-spectacular)
