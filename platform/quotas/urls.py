from django.urls import path

from quotas import views

app_name = "quotas"

urlpatterns = [
    path("", views.queue_page, name="queue"),
    path("quotas/", views.quota_page, name="quotas"),
]
