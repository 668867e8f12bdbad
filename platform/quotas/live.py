"""The live queue and quota pages: what each page shows, and its websocket pushes.

`queue_board(user, pool)` is one snapshot of the queue page (the pools, the waiting runs
the user may see, each with its place and the reason it waits, the quotas and the
GPU-hours of their teams); `quota_board(user)` one of the quota page (GPU-hours used of
each period's limit, the GPUs, run slots on a CPU pool, the holder holds now of its
concurrent limit, each pool's capacity in use). Quotas and usage are the user's teams'
and their own (staff see every team's quotas), as `quotas.selectors` scopes them.

Every socket of either page joins LIVE_GROUP, and a push asks each socket to send its
page a fresh snapshot. Pushes come from two places:
- events: `publish_change` (from transaction.on_commit only: by runs.lifecycle when a run
  is admitted, starts, finishes or goes back to the queue, and by quotas.services when a
  run joins a queue or a pool or quota is changed);
- time alone: a waiting run's reason also changes with no event (a team's GPU-hours run
  out while its runs run; the rolling period moves past old usage and hours come back).
  The admission sweep (workers.tasks.admit_runs, on Celery beat every
  ROLLYARD_ADMIT_EVERY_S) calls `publish_if_decisions_changed`, which pushes once when
  the queue's decisions differ from the last ones published, and not at all otherwise:
  a quiet queue wakes no socket.
Both record what they publish as one fingerprint of the decisions (`decisions_fingerprint`:
per pool, each waiting run's place, fits-now and reason) in the channel layer's Redis,
under the layer's prefix, where every web process, worker and beat sees it. The record is
swapped atomically (SET ... GET): of two sweeps that notice the same change, one pushes.
A reason that quotes a number that grows (GPU-hours "used: 10.2/10") is pushed when its
displayed, rounded value changes.

Numbers that grow continuously are not pushed: the pages redraw their last snapshot on
their own clock (frontend/static/rollyard/live_board.js). A quota row carries
`gpu_hours_rate` (GPU-hours per hour its `gpu_hours_used` changes by now), by which the
quota page advances the figure; the rate holds until an allocation's start or end leaves
the rolling period, and should that change why a run waits, the sweep pushes a fresh
snapshot. The queue page words each wait from the snapshot's `at` and the run's
`requested_at`, as `waiting` (Django's timesince) does here.
"""

import hashlib
import json
from dataclasses import asdict
from datetime import timedelta
from functools import cache
from typing import Any

import redis
from django.conf import settings
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone
from django.utils.timesince import timesince

from accounts.live import send_to_group
from quotas import selectors
from quotas.admission import gpu_hours_rate, gpu_hours_used, plan_pool
from quotas.models import Allocation

LIVE_GROUP = "queue-and-quotas"
QUOTAS_CHANGED = "quotas.changed"  # the consumers' handler: quotas_changed
QUEUE_ROWS = 200  # waiting runs one snapshot lists at most; it counts the rest
USAGE_DAYS = 30
# Where the last published decisions' fingerprint lives, under the channel layer's prefix.
# A day without a push lets it expire; the next sweep then pushes once.
PUBLISHED_KEY = "queue-and-quotas:published-decisions"
PUBLISHED_TTL_S = 24 * 3600


def pool_rows() -> list[dict[str, Any]]:
    rows = []
    for row in selectors.pool_occupancy():
        pool = row["pool"]
        accelerator = pool.get_accelerator_display() + (f" · {pool.gpu_type}" if pool.gpu_type else "")
        rows.append({"name": pool.name, "accelerator": accelerator, "unit": pool.unit, "unit_one": pool.unit_one,
                     "capacity": pool.capacity, "in_use": row["in_use"], "queued": row["queued"], "active": pool.active})
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
            "unit_one": quota.pool.unit_one,
            "holder": quota.holder,
            "concurrent_in_use": held,
            "max_concurrent_gpus": quota.max_concurrent_gpus,
            "max_gpus_per_run": quota.max_gpus_per_run,
            "gpu_hours_used": round(gpu_hours_used(quota, now), 4) if limited else None,
            "gpu_hours_rate": gpu_hours_rate(quota, now) if limited else None,
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


def decisions_fingerprint() -> str:
    """A hash of the queue's decisions as the queue pages read them: every pool's waiting
    runs, each with its place, whether it fits now and why it waits (`plan_pool` without
    Ray's numbers, as `selectors.queue` plans)."""
    decisions = [
        [pool.name, decision.allocation.run_id, decision.position, decision.admit, decision.reason]
        for pool in selectors.pools()
        for decision in plan_pool(pool)
    ]
    return hashlib.sha256(json.dumps(decisions).encode()).hexdigest()


@cache
def _redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=5)


def _swap_published(fingerprint: str) -> str | None:
    """Record `fingerprint` as the last published and return the one it replaces (None
    when there was none), in one atomic SET ... GET."""
    config = settings.CHANNEL_LAYERS["default"]["CONFIG"]
    host = config["hosts"][0]
    url = host if isinstance(host, str) else host["address"]
    key = f"{config.get('prefix', 'asgi')}:{PUBLISHED_KEY}"
    previous = _redis(url).set(key, fingerprint, ex=PUBLISHED_TTL_S, get=True)
    return None if previous is None else previous.decode()


def publish_change() -> None:
    """Tell every queue and quota page that what they show may have changed. From
    on_commit only (see `publish_change_on_commit`)."""
    _swap_published(decisions_fingerprint())
    send_to_group(LIVE_GROUP, {"type": QUOTAS_CHANGED})


def publish_if_decisions_changed() -> bool:
    """Push to every page when the queue's decisions differ from the last ones published
    (time alone changed a reason); say whether it pushed. Outside any transaction: the
    admission sweep's, after its admissions committed."""
    fingerprint = decisions_fingerprint()
    if _swap_published(fingerprint) == fingerprint:
        return False
    send_to_group(LIVE_GROUP, {"type": QUOTAS_CHANGED})
    return True


def publish_change_on_commit() -> None:
    # robust: the change is committed; a Redis hiccup must not fail the caller.
    transaction.on_commit(publish_change, robust=True)
