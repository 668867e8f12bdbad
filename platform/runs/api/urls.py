from django.urls import path
from drf_spectacular.views import SpectacularAPIView
from rest_framework.routers import DefaultRouter

from runs.api.views import RunViewSet, SpecDefaultsView, SpecSchemaView

app_name = "api"

router = DefaultRouter()
router.register("runs", RunViewSet, basename="run")

urlpatterns = [
    path("spec/defaults/", SpecDefaultsView.as_view(), name="spec-defaults"),
    path("spec/schema/", SpecSchemaView.as_view(), name="spec-schema"),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    *router.urls,
]
