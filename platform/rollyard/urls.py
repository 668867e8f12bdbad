from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="runs:list", permanent=False)),
    path("runs/", include("runs.urls")),
    path("api/", include("runs.api.urls")),
    path("api/", include("accounts.api.urls")),
    path("api/", include("quotas.api.urls")),
    path("queue/", include("quotas.urls")),
    path("api/", include("catalog.api.urls")),
    path("", include("catalog.urls")),  # /datasets/..., /presets/...
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/", admin.site.urls),
]
