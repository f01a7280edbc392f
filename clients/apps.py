from django.apps import AppConfig


class ClientsConfig(AppConfig):
    name = "clients"
    verbose_name = "API clients"

    def ready(self) -> None:
        # Every API process caches key rows (core.statecache): any change to a key or a client
        # (made, revoked, deactivated, deleted) makes them stale everywhere at once.
        from django.db.models.signals import post_delete, post_save

        from core import statecache

        from .models import ApiClient, ApiKey

        for model in (ApiClient, ApiKey):
            post_save.connect(statecache.bump, sender=model, dispatch_uid=f"statecache-{model.__name__}-save")
            post_delete.connect(statecache.bump, sender=model, dispatch_uid=f"statecache-{model.__name__}-delete")
