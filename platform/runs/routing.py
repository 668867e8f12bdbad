from django.urls import path

from quotas.consumers import QueueConsumer, QuotaConsumer
from runs.consumers import RunConsumer, RunListConsumer

websocket_urlpatterns = [
    path("ws/runs/", RunListConsumer.as_asgi()),
    path("ws/runs/<int:run_id>/", RunConsumer.as_asgi()),
    path("ws/queue/", QueueConsumer.as_asgi()),
    path("ws/quotas/", QuotaConsumer.as_asgi()),
]
