from django.urls import path

from catalog.api import views

app_name = "catalog-api"

urlpatterns = [
    path("datasets/", views.DatasetListView.as_view(), name="dataset-list"),
    path("datasets/<int:dataset_id>/", views.DatasetDetailView.as_view(), name="dataset-detail"),
    path("datasets/<int:dataset_id>/records/", views.DatasetRecordsView.as_view(), name="dataset-records"),
    path(
        "datasets/<int:dataset_id>/records/<int:record_id>/",
        views.PromptHistoryView.as_view(),
        name="dataset-record",
    ),
    path("presets/", views.PresetListView.as_view(), name="preset-list"),
    path("presets/algorithms/", views.AlgorithmDefaultsView.as_view(), name="preset-algorithms"),
    path("presets/curricula/", views.CurriculumDefaultsView.as_view(), name="preset-curricula"),
    path("presets/<int:preset_id>/", views.PresetDetailView.as_view(), name="preset-detail"),
    path("presets/<int:preset_id>/versions/", views.PresetVersionsView.as_view(), name="preset-versions"),
]
