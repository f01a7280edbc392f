from django.urls import path

from . import batches, rollouts, stats, views

urlpatterns = [
    path("models/", views.ModelCollectionView.as_view(), name="model-collection"),
    path("models/<str:version_id>/", views.ModelDetailView.as_view(), name="model-detail"),
    path("models/<str:version_id>/stats/", stats.VersionStatsView.as_view(), name="model-stats"),  # operators only
    path("images/", views.ImageCollectionView.as_view(), name="image-collection"),
    path("images/<str:image_id>/", views.ImageDetailView.as_view(), name="image-detail"),
    path("images/<str:image_id>/cancel/", views.ImageCancelView.as_view(), name="image-cancel"),
    path("images/<str:image_id>/redeliver/", views.ImageRedeliverView.as_view(), name="image-redeliver"),
    path("images/<str:image_id>/annotated/", views.ImageAnnotatedView.as_view(), name="image-annotated"),
    path("batches/", batches.BatchCollectionView.as_view(), name="batch-collection"),
    path("batches/<str:batch_id>/", batches.BatchDetailView.as_view(), name="batch-detail"),
    path("batches/<str:batch_id>/results/", batches.BatchResultsView.as_view(), name="batch-results"),
    path("batches/<str:batch_id>/cancel/", batches.BatchCancelView.as_view(), name="batch-cancel"),
    # Operators only (api.auth.IsOperator).
    path("rollouts/", rollouts.RolloutCollectionView.as_view(), name="rollout-collection"),
    path("rollouts/<str:rollout_id>/", rollouts.RolloutDetailView.as_view(), name="rollout-detail"),
    path("rollouts/<str:rollout_id>/promote/", rollouts.RolloutPromoteView.as_view(), name="rollout-promote"),
    path("rollouts/<str:rollout_id>/rollback/", rollouts.RolloutRollbackView.as_view(), name="rollout-rollback"),
    path("rollouts/<str:rollout_id>/pause/", rollouts.RolloutPauseView.as_view(), name="rollout-pause"),
    path("rollouts/<str:rollout_id>/resume/", rollouts.RolloutResumeView.as_view(), name="rollout-resume"),
    path("rollouts/<str:rollout_id>/advance/", rollouts.RolloutAdvanceView.as_view(), name="rollout-advance"),
    path("rollouts/<str:rollout_id>/end/", rollouts.RolloutEndView.as_view(), name="rollout-end"),
]
