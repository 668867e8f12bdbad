from django.urls import path

from catalog import views

app_name = "catalog"

urlpatterns = [
    path("datasets/", views.dataset_list, name="dataset-list"),
    path("datasets/<int:dataset_id>/", views.dataset_detail, name="dataset-detail"),
    path("datasets/<int:dataset_id>/prompts/<int:record_id>/", views.prompt_detail, name="prompt-detail"),
    path("presets/", views.preset_list, name="preset-list"),
    path("presets/<int:preset_id>/", views.preset_detail, name="preset-detail"),
]
