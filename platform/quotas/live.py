"""The live queue and quota pages: what each page shows, and its websocket pushes.

`queue_board(user, pool)` is one snapshot of the queue page (the pools, the waiting runs
the user may see, each with its place and the reason it waits, the quotas and the
GPU-hours of their teams); `quota_board(user)` one of the quota page (GPU-hours used of
each period's limit, the GPUs, run slots on a CPU pool, the holder holds now of its
concurrent limit, each pool's capacity in use). Quotas and usage are the user's teams'
and their own (staff see every team's quotas), as `quotas.selectors` scopes them.

Every socket of either page joins LIVE_GROUP; `publish_change` (from
transaction.on_commit only: by runs.lifecycle when a run is admitted, starts, finishes or
goes back to the queue, and by quotas.services when a run joins a queue or a pool or
quota is changed) asks each socket to send its page a fresh snapshot.
"""

from dataclasses import asdict
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.db.models import Sum
from django.utils import timezone
from django.utils.timesince import timesince

from accounts.live import send_to_group
from quotas import selectors
from quotas.admission import gpu_hours_used
from quotas.models import Allocation

LIVE_GROUP = "queue-and-quotas"
QUOTAS_CHANGED = "quotas.changed"  # the consumers' handler: quotas_changed
QUEUE_ROWS = 200  # waiting runs one snapshot lists at most; it counts the rest
USAGE_DAYS = 30


def pool_rows() -> list[dict[str, Any]]:
    rows = []
    for row in selectors.pool_occupancy():
        pool = row["pool"]
        accelerator = pool.get_accelerator_display() + (f" · {pool.gpu_type}" if pool.gpu_type else "")
        rows.append({"name": pool.name, "accelerator": accelerator, "unit": pool.unit, "capacity": pool.capacity,
                     "in_use": row["in_use"], "queued": row["queued"], "active": pool.active})
    return rows


def quota_rows(user) -> list[dict[str, Any]]:
    now = timezone.now()
    rows = []
    for quota in selectors.visible_quotas(user).order_by("pool__name", "team__name", "user__username", "id"):
        holder = {"team_id": quota.team_id} if quota.team_id else {"user_id": quota.user_id}
        held = Allocation.objects.filter(pool_id=quota.pool_id, admitted_at__isnull=False, released_at__isnull=True,
                                         **holder).aggregate(slots=Sum("slots"))["slots"] or 0
        limited = quota.gpu_hours_per_period is not None
        rows.append({
            "id": quota.pk,
            "pool": quota.pool.name,
            "unit": quota.pool.unit,
            "holder": quota.holder,
            "concurrent_in_use": held,
            "max_concurrent_gpus": quota.max_concurrent_gpus,
            "max_gpus_per_run": quota.max_gpus_per_run,
            "gpu_hours_used": round(gpu_hours_used(quota, now), 4) if limited else None,
            "gpu_hours_per_period": quota.gpu_hours_per_period,
            "period_days": quota.period_days,
        })
    return rows


def quota_board(user) -> dict[str, Any]:
    return {"at": timezone.now().isoformat(), "all_teams": bool(user.is_staff), "pools": pool_rows(),
            "quotas": quota_rows(user)}


def queue_board(user, pool_name: str | None = None) -> dict[str, Any]:
    """The queue page's snapshot, `pool_name`'s queue only when given. Lists the first
    QUEUE_ROWS waiting runs; "waiting_total" counts them all."""
    now = timezone.now()
    entries = selectors.queue(user, pool_name)
    waiting = [
        asdict(entry) | {"requested_at": entry.requested_at.isoformat(), "waiting": timesince(entry.requested_at, now)}
        for entry in entries[:QUEUE_ROWS]
    ]
    usage = selectors.usage(user, since=now - timedelta(days=USAGE_DAYS), until=now)
    return {
        "at": now.isoformat(),
        "pool_name": pool_name,
        "pools": pool_rows(),
        "queue": waiting,
        "waiting_total": len(entries),
        "quotas": quota_rows(user),
        "usage": {side: [asdict(row) for row in rows] for side, rows in usage.items()},
        "usage_days": USAGE_DAYS,
    }


def publish_change() -> None:
    """Tell every queue and quota page that what they show may have changed. From
    on_commit only (see `publish_change_on_commit`)."""
    send_to_group(LIVE_GROUP, {"type": QUOTAS_CHANGED})


def publish_change_on_commit() -> None:
    # robust: the change is committed; a Redis hiccup must not fail the caller.
    transaction.on_commit(publish_change, robust=True)
