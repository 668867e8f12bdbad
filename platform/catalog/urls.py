from django.urls import path

from catalog import views

app_name = "catalog"

urlpatterns = [
    path("", views.dataset_list, name="dataset-list"),
    path("<int:dataset_id>/", views.dataset_detail, name="dataset-detail"),
    path("<int:dataset_id>/prompts/<int:record_id>/", views.prompt_detail, name="prompt-detail"),
]
