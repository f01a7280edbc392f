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
