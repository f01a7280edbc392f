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

        # Every API process caches the active version and versions by id (core.statecache): an
        # activation, a retirement, any change to a version makes them stale everywhere at once.
        from django.db.models.signals import post_delete, post_save

        from core import statecache

        from .models import ActiveDetector, DetectorVersion

        for model in (ActiveDetector, DetectorVersion):
            post_save.connect(statecache.bump, sender=model, dispatch_uid=f"statecache-{model.__name__}-save")
            post_delete.connect(statecache.bump, sender=model, dispatch_uid=f"statecache-{model.__name__}-delete")
