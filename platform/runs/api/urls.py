from django.urls import path
from drf_spectacular.views import SpectacularAPIView
from rest_framework.routers import DefaultRouter

from runs.api import dashboards, prompts
from runs.api.views import RunViewSet, SpecDefaultsView, SpecSchemaView

app_name = "api"

router = DefaultRouter()
router.register("runs", RunViewSet, basename="run")

urlpatterns = [
    path("spec/defaults/", SpecDefaultsView.as_view(), name="spec-defaults"),
    path("spec/schema/", SpecSchemaView.as_view(), name="spec-schema"),
    path("spec/validate/", dashboards.SpecValidateView.as_view(), name="spec-validate"),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("runs/<int:run_id>/prompts/", prompts.PromptDifficultyList.as_view(), name="run-prompts"),
    path("runs/<int:run_id>/prompts/heatmap/", prompts.PassRateHeatmap.as_view(), name="run-prompts-heatmap"),
    # path: a prompt id may hold slashes (a dataset's own id column).
    path(
        "runs/<int:run_id>/prompts/<path:prompt_id>/samples/",
        prompts.PromptSampleList.as_view(),
        name="run-prompt-samples",
    ),
    path("runs/<int:run_id>/samples/", prompts.RunSampleList.as_view(), name="run-samples"),
    path("runs/<int:run_id>/savings/", dashboards.SavingsView.as_view(), name="run-savings"),
    *router.urls,
]
