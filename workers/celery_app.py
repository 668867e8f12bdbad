"""The Celery application. Configuration comes from Django settings (CELERY_* names)."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "rollyard.settings")

app = Celery("rollyard")
app.config_from_object("django.conf:settings", namespace="CELERY")
# quotas.tasks: admission sweeps.
app.autodiscover_tasks(["workers", "quotas"])
