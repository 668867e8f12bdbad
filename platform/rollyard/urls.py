from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularSwaggerView

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="runs:list", permanent=False)),
    path("runs/", include("runs.urls")),
    # Swagger UI over /api/schema/, from our own static files (drf-spectacular-sidecar).
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api:schema"), name="api-docs"),
    path("api/", include("runs.api.urls")),
    path("api/", include("accounts.api.urls")),
    path("api/", include("quotas.api.urls")),
    path("queue/", include("quotas.urls")),
    path("api/", include("catalog.api.urls")),
    path("", include("catalog.urls")),  # /datasets/..., /presets/...
    path("accounts/", include("accounts.urls")),  # /accounts/tokens/
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/", admin.site.urls),
]
