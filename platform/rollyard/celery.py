"""The Celery application. Configuration comes from Django settings (CELERY_* names).

It lives in the project, not in workers/, so that the platform sends tasks (by name,
rollyard.dispatch) without importing the workers; the workers import it to register
their tasks. `include` is a module name, imported only where a worker starts."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "rollyard.settings")

app = Celery("rollyard", include=["workers.tasks"])
app.config_from_object("django.conf:settings", namespace="CELERY")
