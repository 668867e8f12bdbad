"""Reads of pools, quotas, the queue and usage, scoped to what the user may see.

Pools are visible to every signed-in user (the launch form lists them). Quotas, queue
entries and usage are visible for the user's own teams and the user's own quotas; staff
see everything. A queue position counts every run ahead in the pool, visible or not,
but shows nothing else of another team's runs.
"""

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import Model, Q, QuerySet
from django.utils import timezone

from accounts.permissions import teams_of
from quotas.admission import plan_pool
from quotas.models import DEFAULT_POOL, Allocation, Pool, Quota

User = AbstractBaseUser | AnonymousUser


def pools() -> QuerySet[Pool]:
    return Pool.objects.order_by("name")


def visible_quotas(user: User) -> QuerySet[Quota]:
    quotas = Quota.objects.select_related("pool", "team", "user")
    if user.is_staff:
        return quotas
    return quotas.filter(Q(team__in=teams_of(user)) | Q(user_id=user.pk))


@dataclass
class QueueEntry:
    run_id: int
    run_name: str
    owner: str
    team: str
    pool: str
    gpus: int
    priority: int
    requested_at: datetime
    position: int  # 1-based place in its pool's queue
    ahead: int  # runs before it in that queue, any team's
    reason: str  # why it waits (quotas.admission.plan_pool)
    fits_now: bool  # the next admission sweep starts it


def queue(user: User, pool_name: str | None = None) -> list[QueueEntry]:
    """The queued runs the user may see, each with its position in its pool and the
    reason it waits, in pool order then queue order."""
    visible_team_ids = set(teams_of(user).values_list("pk", flat=True))
    entries: list[QueueEntry] = []
    for pool in pools().filter(name=pool_name) if pool_name else pools():
        for decision in plan_pool(pool):
            allocation = decision.allocation
            if allocation.team_id not in visible_team_ids:
                continue
            reason = "fits now: the next admission sweep starts it" if decision.admit else decision.reason
            entries.append(
                QueueEntry(
                    run_id=allocation.run_id,
                    run_name=allocation.run.name,
                    owner=allocation.user.get_username(),
                    team=allocation.team.name,
                    pool=pool.name,
                    gpus=decision.allocation.gpus,
                    priority=decision.allocation.priority,
                    requested_at=decision.allocation.requested_at,
                    position=decision.position,
                    ahead=decision.position - 1,
                    reason=reason,
                    fits_now=decision.admit,
                )
            )
    return entries


def pool_occupancy() -> list[dict[str, Any]]:
    """Each pool with what its admitted and running runs hold now, and how many wait."""
    held: dict[int, int] = defaultdict(int)
    waiting: dict[int, int] = defaultdict(int)
    for allocation in Allocation.objects.filter(released_at__isnull=True).only("pool_id", "slots", "admitted_at"):
        if allocation.admitted_at is None:
            waiting[allocation.pool_id] += 1
        else:
            held[allocation.pool_id] += allocation.slots
    return [
        {"pool": pool, "in_use": held[pool.pk], "queued": waiting[pool.pk]}
        for pool in pools()
    ]


@dataclass
class UsageRow:
    pool: str
    team: str
    user: str | None  # None on a team's row
    gpu_hours: float
    runs: int


def usage(user: User, since: datetime, until: datetime | None = None, pool_name: str | None = None) -> dict[str, list[UsageRow]]:
    """GPU-hours held within [since, until] (until defaults to now; runs still going count
    up to it), per team and pool and per user, team and pool, over the teams the user may
    see. {"teams": [...], "users": [...]}, largest first."""
    until = until or timezone.now()
    allocations = Allocation.objects.filter(
        admitted_at__isnull=False, admitted_at__lt=until, team__in=teams_of(user)
    ).exclude(released_at__lt=since)
    if pool_name:
        allocations = allocations.filter(pool__name=pool_name)
    team_hours: dict[tuple[str, str], float] = defaultdict(float)
    team_runs: dict[tuple[str, str], set[int]] = defaultdict(set)
    user_hours: dict[tuple[str, str, str], float] = defaultdict(float)
    user_runs: dict[tuple[str, str, str], set[int]] = defaultdict(set)
    for allocation in allocations.select_related("pool", "team", "user"):
        hours = allocation.gpu_hours(since, until)
        team_key = (allocation.pool.name, allocation.team.name)
        user_key = (*team_key, allocation.user.get_username())
        team_hours[team_key] += hours
        team_runs[team_key].add(allocation.run_id)
        user_hours[user_key] += hours
        user_runs[user_key].add(allocation.run_id)
    teams = [
        UsageRow(pool=pool, team=team, user=None, gpu_hours=round(hours, 4), runs=len(team_runs[(pool, team)]))
        for (pool, team), hours in team_hours.items()
    ]
    users = [
        UsageRow(pool=pool, team=team, user=name, gpu_hours=round(hours, 4), runs=len(user_runs[(pool, team, name)]))
        for (pool, team, name), hours in user_hours.items()
    ]
    largest_first = lambda row: (-row.gpu_hours, row.pool, row.team, row.user or "")  # noqa: E731
    return {"teams": sorted(teams, key=largest_first), "users": sorted(users, key=largest_first)}


def pool_name_of(run: Model | None) -> str:
    """The pool `run` (a runs.Run) last asked for (a clone or a fork goes there too); the
    default pool for no run or a run stored before pools existed. A question about the
    ledger, so it lives here; typed Model because quotas never imports runs."""
    allocation = Allocation.objects.filter(run=run).select_related("pool").order_by("-id").first() if run else None
    return allocation.pool.name if allocation else DEFAULT_POOL
