"""The queue page (pools and what they hold, each waiting run's place and reason, the
quotas and GPU-hours of the user's teams) and the quota page, both live: each is drawn
from the snapshot (`quotas.live`) its websocket sends again whenever it may have changed."""

from urllib.parse import urlencode

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from quotas.live import queue_board, quota_board


@login_required
def queue_page(request: HttpRequest) -> HttpResponse:
    pool_name = request.GET.get("pool") or None
    ws_path = "/ws/queue/" + (f"?{urlencode({'pool': pool_name})}" if pool_name else "")
    return render(request, "quotas/queue.html", {"board": queue_board(request.user, pool_name), "ws_path": ws_path})


@login_required
def quota_page(request: HttpRequest) -> HttpResponse:
    """The quotas of the user's teams (staff: every team's), live: GPU-hours used of each
    period's limit, GPUs held of the concurrent limit, the pools' capacity in use."""
    return render(request, "quotas/quotas.html", {"board": quota_board(request.user), "ws_path": "/ws/quotas/"})
