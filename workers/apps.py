from django.apps import AppConfig


class WorkersConfig(AppConfig):
    name = "workers"

    def ready(self) -> None:
        # Connects the worker-process signals (detector preload); nothing is loaded here.
        from . import signals  # noqa: F401
