from django.apps import AppConfig


class RolloutsConfig(AppConfig):
    name = "rollouts"
    verbose_name = "Rollouts"

    def ready(self) -> None:
        # A version a live rollout routes jobs to must not be retired under it: the registry
        # asks this app (it never imports rollouts).
        from registry.services import detector_version_retire_guard_add

        from .services import rollout_retire_refusal

        detector_version_retire_guard_add(rollout_retire_refusal)

        # Every API process caches the live rollout (core.statecache): a start, a stage, a
        # pause, a rollback or an end routes the next upload everywhere.
        from django.db.models.signals import post_delete, post_save

        from core import statecache

        from .models import Rollout

        post_save.connect(statecache.bump, sender=Rollout, dispatch_uid="statecache-Rollout-save")
        post_delete.connect(statecache.bump, sender=Rollout, dispatch_uid="statecache-Rollout-delete")
