"""The queue page: pools and what they hold, each waiting run's place and reason, and the
usage of the user's teams. Reads the same selectors as the REST API."""

from datetime import timedelta

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

from quotas import selectors
from quotas.live import quota_board

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


@login_required
def quota_page(request: HttpRequest) -> HttpResponse:
    """The quotas of the user's teams (staff: every team's), live: GPU-hours used of each
    period's limit, GPUs held of the concurrent limit, the pools' capacity in use. Drawn
    from the snapshot the page's websocket (/ws/quotas/) sends again whenever a run
    starts or finishes."""
    return render(request, "quotas/quotas.html", {"board": quota_board(request.user), "ws_path": "/ws/quotas/"})
