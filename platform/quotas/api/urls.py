from django.urls import path
from rest_framework.routers import SimpleRouter

from quotas.api.views import PoolViewSet, QueueView, QuotaViewSet, UsageView

app_name = "quotas-api"

router = SimpleRouter()
router.register("pools", PoolViewSet, basename="pool")
router.register("quotas", QuotaViewSet, basename="quota")

urlpatterns = [
    path("queue/", QueueView.as_view(), name="queue"),
    path("usage/", UsageView.as_view(), name="usage"),
    *router.urls,
]
