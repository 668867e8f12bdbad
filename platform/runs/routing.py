from django.urls import path

from quotas.consumers import QuotaConsumer
from runs.consumers import RunConsumer

websocket_urlpatterns = [
    path("ws/runs/<int:run_id>/", RunConsumer.as_asgi()),
    path("ws/quotas/", QuotaConsumer.as_asgi()),
]
