from django.urls import path

from quotas import views

app_name = "quotas"

urlpatterns = [
    path("", views.queue_page, name="queue"),
]
