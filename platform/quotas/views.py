"""The queue page: pools and what they hold, each waiting run's place and reason, and the
usage of the user's teams. Reads the same selectors as the REST API."""

from datetime import timedelta

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

from quotas import selectors

USAGE_PAGE_DAYS = 30


@login_required
def queue_page(request: HttpRequest) -> HttpResponse:
    pool_name = request.GET.get("pool") or None
    now = timezone.now()
    context = {
        "pools": selectors.pool_occupancy(),
        "queue": selectors.queue(request.user, pool_name),
        "pool_name": pool_name,
        "quotas": selectors.visible_quotas(request.user),
        "usage": selectors.usage(request.user, since=now - timedelta(days=USAGE_PAGE_DAYS), until=now),
        "usage_days": USAGE_PAGE_DAYS,
    }
    return render(request, "quotas/queue.html", context)
