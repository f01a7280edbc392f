from django.apps import AppConfig


class RegistryConfig(AppConfig):
    name = "registry"
    verbose_name = "Model registry"

    def ready(self) -> None:
        # Engines of uploaded models find their file through the registry's cache (fetched from
        # the bucket by sha256 on first use): detection/ itself knows no Django and no bucket.
        from detection import engines

        from .artifacts import artifact_local_path

        engines.artifact_source = artifact_local_path
