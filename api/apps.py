from django.apps import AppConfig


class ApiConfig(AppConfig):
    name = "api"
    verbose_name = "Face detection jobs"

    def ready(self) -> None:
        from . import schema  # noqa: F401  (registers the API key scheme with drf-spectacular)
