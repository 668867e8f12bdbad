"""What fits: which pending allocations of a pool may be admitted now, and why the others
wait. It reads the allocation ledger and the quotas only, never the runs: the admission
sweep (`runs.admission`) admits what `plan_pool` says fits, and the queue view shows its
reasons for the rest.

Order: priority (higher first), then age. A run blocked only by its own team's or
user's quota is passed over (the capacity it cannot use goes to the runs behind it); a
run that fits its quotas but not the pool's free capacity holds its place: nothing
behind it is admitted in that pool until it starts, so a large run is never starved by a
stream of small ones.

Free capacity is the pool's capacity less what admitted and running runs hold, and, on a
GPU pool when the caller passes Ray's free GPUs (`cluster_free_gpus`, read by the worker's
admission task, workers.capacity), no more than those. Ray already counts the GPUs of runs
it is running; taking the smaller of the two never counts them twice. The web tier never
starts Ray: it plans without Ray's numbers.
"""

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

from django.db.models import Q, QuerySet
from django.utils import timezone

from quotas.models import Allocation, Pool, Quota
from rollyard.text import count


@dataclass
class Decision:
    allocation: Allocation
    position: int  # 1-based place in the pool's queue
    admit: bool
    reason: str  # why it waits; what admitted it when admit is True


@dataclass
class PoolUsage:
    """What a pool's held allocations add up to right now."""

    pool: Pool
    now: datetime
    slots_in_use: int = 0
    slots_by_team: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    slots_by_user: dict[int, int] = field(default_factory=lambda: defaultdict(int))

    # quota id → gpu_hours_exhausted's answer; admitting a run now adds no hours yet.
    exhausted_by_quota: dict[int, str | None] = field(default_factory=dict)

    def hold(self, allocation: Allocation) -> None:
        self.slots_in_use += allocation.slots
        self.slots_by_team[allocation.team_id] += allocation.slots
        self.slots_by_user[allocation.user_id] += allocation.slots

    def exhausted_message(self, quota: Quota) -> str | None:
        if quota.pk not in self.exhausted_by_quota:
            self.exhausted_by_quota[quota.pk] = gpu_hours_exhausted(quota, self.now)
        return self.exhausted_by_quota[quota.pk]


def quotas_of(pool: Pool, team_id: int, user_id: int) -> list[Quota]:
    """The quotas that bind a run of this team and user in this pool, team first."""
    quotas = Quota.objects.filter(Q(team_id=team_id) | Q(user_id=user_id), pool=pool).select_related("team", "user")
    return sorted(quotas, key=lambda quota: quota.team_id is None)


def holder_allocations(quota: Quota, since: datetime) -> QuerySet[Allocation]:
    """The quota's team's or user's allocations in its pool held at some time from `since` on."""
    holder = {"team_id": quota.team_id} if quota.team_id else {"user_id": quota.user_id}
    return Allocation.objects.filter(pool_id=quota.pool_id, admitted_at__isnull=False, **holder).exclude(
        released_at__lt=since
    )


def gpu_hours_used(quota: Quota, now: datetime) -> float:
    """GPU-hours the quota's team or user spent in its pool over the quota's period
    (a rolling window: the last period_days days), counting runs still going up to now."""
    since = quota.period_start(now)
    return sum(allocation.gpu_hours(since, now) for allocation in holder_allocations(quota, since))


def gpu_hours_rate(quota: Quota, now: datetime) -> int:
    """How fast `gpu_hours_used` changes at `now`, in GPU-hours per hour: the GPUs the
    holder holds now, less those it held when the period began (the window's start moves
    past them). Steady until an allocation starts or ends at either edge of the window."""
    since = quota.period_start(now)
    allocations = list(holder_allocations(quota, since))
    held_now = sum(allocation.gpus for allocation in allocations if allocation.held_at(now))
    held_at_start = sum(allocation.gpus for allocation in allocations if allocation.held_at(since))
    return held_now - held_at_start


def gpu_hours_exhausted(quota: Quota, now: datetime) -> str | None:
    """A message naming the limit when the quota's GPU-hours for the period are used up."""
    if quota.gpu_hours_per_period is None:
        return None
    used = gpu_hours_used(quota, now)
    if used < quota.gpu_hours_per_period:
        return None
    return (
        f"GPU-hours of {quota.holder} on {quota.pool} in the last {count(quota.period_days, 'day')} used: "
        f"{used:.1f}/{quota.gpu_hours_per_period:g}"
    )


def quota_blocker(quota: Quota, usage: PoolUsage, slots: int) -> str | None:
    """Why this quota keeps a run holding `slots` from starting now, or None."""
    if quota.max_concurrent_gpus is not None:
        held = usage.slots_by_team[quota.team_id] if quota.team_id else usage.slots_by_user[quota.user_id]
        if held + slots > quota.max_concurrent_gpus:
            return (
                f"{quota.holder} quota on {usage.pool}: {held}/{usage.pool.count(quota.max_concurrent_gpus)} in use"
                f" (this run needs {slots})"
            )
    return usage.exhausted_message(quota)


def plan_pool(pool: Pool, cluster_free_gpus: float | None = None, now: datetime | None = None) -> list[Decision]:
    """Decide, for every pending allocation of the pool in queue order, whether it may be
    admitted now and, if not, why it waits. Reads only; callers that act on the plan hold
    the pool's row lock (`runs.admission.admit_pool`) so that no other sweep acts on a
    stale one. Pending means neither admitted nor released: a run's allocation is
    pending exactly while the run is queued (runs.lifecycle.transition releases it when
    the run leaves the queue any other way than by admission)."""
    now = now or timezone.now()
    usage = PoolUsage(pool=pool, now=now)
    held = Allocation.objects.filter(pool=pool, admitted_at__isnull=False, released_at__isnull=True)
    for allocation in held:
        usage.hold(allocation)

    free = pool.capacity - usage.slots_in_use
    ray_limited = False
    ray_free = None if cluster_free_gpus is None else max(0, int(cluster_free_gpus))
    if ray_free is not None and not pool.is_cpu and ray_free < free:
        free, ray_limited = ray_free, True

    pending = Allocation.objects.filter(pool=pool, admitted_at__isnull=True, released_at__isnull=True)
    # The run, team and user only for the queue view's names.
    pending = pending.select_related("run", "team", "user")
    quotas_by_holder: dict[tuple[int, int], list[Quota]] = {}
    decisions: list[Decision] = []
    blocked_by: Allocation | None = None  # the first run that fits its quotas but not the pool
    for position, allocation in enumerate(pending.order_by("-priority", "requested_at", "id"), start=1):
        key = (allocation.team_id, allocation.user_id)
        if key not in quotas_by_holder:
            quotas_by_holder[key] = quotas_of(pool, *key)
        if pool.active:
            blockers = (quota_blocker(quota, usage, allocation.slots) for quota in quotas_by_holder[key])
            reason = next((blocker for blocker in blockers if blocker), None)
        else:
            reason = f"pool {pool} is inactive: it admits nothing until a site admin reopens it"
        if reason is None and blocked_by is not None:
            reason = f"behind run #{blocked_by.run_id}, which is first in line for {pool.unit} of pool {pool}"
        if reason is None and allocation.slots > free:
            blocked_by = allocation
            if ray_limited:
                reason = f"Ray cluster has {count(free, 'free GPU')} left (this run needs {allocation.slots})"
            else:
                reason = (
                    f"pool {pool} full: {pool.capacity - free}/{pool.count(pool.capacity)} in use"
                    f" (this run needs {allocation.slots})"
                )
        if reason is not None:
            decisions.append(Decision(allocation, position, admit=False, reason=reason))
            continue
        free -= allocation.slots
        usage.hold(allocation)
        decisions.append(
            Decision(allocation, position, admit=True, reason=f"admitted to pool {pool}: {pool.count(allocation.slots)}")
        )
    return decisions
