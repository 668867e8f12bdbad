"""The live quota board: what the quota page shows and its websocket pushes.

`quota_board(user)` is one snapshot of the pools and of the quotas the user may see
(their teams' and their own; staff see every team's): GPU-hours used of each period's
limit, the GPUs (run slots on a CPU pool) the holder holds now of its concurrent limit,
and each pool's capacity in use. Every socket of the page joins QUOTAS_GROUP;
`publish_change` (from transaction.on_commit, by runs.lifecycle when a run starts,
finishes or goes back to the queue) asks each to send a fresh snapshot.
"""

from typing import Any

from django.db.models import Sum
from django.utils import timezone

from accounts.live import send_to_group
from quotas import selectors
from quotas.admission import gpu_hours_used
from quotas.models import Allocation

QUOTAS_GROUP = "quotas"
QUOTAS_CHANGED = "quotas.changed"  # the consumers' handler: quotas_changed


def quota_board(user) -> dict[str, Any]:
    now = timezone.now()
    pools = [
        {"name": row["pool"].name, "unit": row["pool"].unit, "capacity": row["pool"].capacity, "in_use": row["in_use"],
         "queued": row["queued"], "active": row["pool"].active}
        for row in selectors.pool_occupancy()
    ]
    quotas = []
    for quota in selectors.visible_quotas(user).order_by("pool__name", "team__name", "user__username", "id"):
        holder = {"team_id": quota.team_id} if quota.team_id else {"user_id": quota.user_id}
        held = Allocation.objects.filter(pool_id=quota.pool_id, admitted_at__isnull=False, released_at__isnull=True,
                                         **holder).aggregate(slots=Sum("slots"))["slots"] or 0
        limited = quota.gpu_hours_per_period is not None
        quotas.append({
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
    return {"at": now.isoformat(), "all_teams": bool(user.is_staff), "pools": pools, "quotas": quotas}


def publish_change() -> None:
    """Tell every quota page a run started, finished or was requeued. From on_commit only."""
    send_to_group(QUOTAS_GROUP, {"type": QUOTAS_CHANGED})
