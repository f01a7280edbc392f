from django.urls import path

from . import views

urlpatterns = [
    path("models/", views.ModelCollectionView.as_view(), name="model-collection"),
    path("models/<str:version_id>/", views.ModelDetailView.as_view(), name="model-detail"),
    path("images/", views.ImageCollectionView.as_view(), name="image-collection"),
    path("images/<str:image_id>/", views.ImageDetailView.as_view(), name="image-detail"),
    path("images/<str:image_id>/redeliver/", views.ImageRedeliverView.as_view(), name="image-redeliver"),
    path("images/<str:image_id>/annotated/", views.ImageAnnotatedView.as_view(), name="image-annotated"),
]
