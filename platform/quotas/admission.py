"""Admission: which queued runs of a pool may start now, and why the others wait.

`plan_pool` is the one source of truth: the admission sweep admits what it says fits,
and the queue view shows its reasons for the rest.

Order: priority (higher first), then age. A run blocked only by its own team's or
user's quota is passed over (the capacity it cannot use goes to the runs behind it); a
run that fits its quotas but not the pool's free capacity holds its place: nothing
behind it is admitted in that pool until it starts, so a large run is never starved by a
stream of small ones.

Free capacity is the pool's capacity less what admitted and running runs hold, and, on a
GPU pool when a Ray cluster is attached to the admitting process, no more than Ray's free
GPUs (`cluster_free_gpus`). Ray already counts the GPUs of runs it is running; taking the
smaller of the two never counts them twice. The web tier never starts Ray: it plans
without Ray's numbers, and only the Celery sweep reads them.
"""

import logging
import os
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from quotas.models import Allocation, Pool, Quota
from runs import services as run_services
from runs.models import RunStatus

logger = logging.getLogger(__name__)


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
        self.slots_by_team[allocation.run.team_id] += allocation.slots
        self.slots_by_user[allocation.run.owner_id] += allocation.slots

    def exhausted_message(self, quota: Quota) -> str | None:
        if quota.pk not in self.exhausted_by_quota:
            self.exhausted_by_quota[quota.pk] = gpu_hours_exhausted(quota, self.now)
        return self.exhausted_by_quota[quota.pk]


def quotas_of(pool: Pool, team_id: int, user_id: int) -> list[Quota]:
    """The quotas that bind a run of this team and user in this pool, team first."""
    quotas = Quota.objects.filter(Q(team_id=team_id) | Q(user_id=user_id), pool=pool).select_related("team", "user")
    return sorted(quotas, key=lambda quota: quota.team_id is None)


def gpu_hours_used(quota: Quota, now: datetime) -> float:
    """GPU-hours the quota's team or user spent in its pool over the quota's period
    (a rolling window: the last period_days days), counting runs still going up to now."""
    since = quota.period_start(now)
    holder = {"run__team_id": quota.team_id} if quota.team_id else {"run__owner_id": quota.user_id}
    allocations = Allocation.objects.filter(pool_id=quota.pool_id, admitted_at__isnull=False, **holder).exclude(
        released_at__lt=since
    )
    return sum(allocation.gpu_hours(since, now) for allocation in allocations)


def gpu_hours_exhausted(quota: Quota, now: datetime) -> str | None:
    """A message naming the limit when the quota's GPU-hours for the period are used up."""
    if quota.gpu_hours_per_period is None:
        return None
    used = gpu_hours_used(quota, now)
    if used < quota.gpu_hours_per_period:
        return None
    return (
        f"GPU-hours of {quota.holder} on {quota.pool} in the last {quota.period_days} days used: "
        f"{used:.1f}/{quota.gpu_hours_per_period:g}"
    )


def quota_blocker(quota: Quota, usage: PoolUsage, slots: int) -> str | None:
    """Why this quota keeps a run holding `slots` from starting now, or None."""
    if quota.max_concurrent_gpus is not None:
        held = usage.slots_by_team[quota.team_id] if quota.team_id else usage.slots_by_user[quota.user_id]
        if held + slots > quota.max_concurrent_gpus:
            return (
                f"{quota.holder} quota on {usage.pool}: {held}/{quota.max_concurrent_gpus} {usage.pool.unit} in use"
                f" (this run needs {slots})"
            )
    return usage.exhausted_message(quota)


def plan_pool(pool: Pool, cluster_free_gpus: float | None = None, now: datetime | None = None) -> list[Decision]:
    """Decide, for every pending allocation of the pool in queue order, whether it may be
    admitted now and, if not, why it waits. Reads only; callers that act on the plan hold
    the pool's row lock (`admit_pool`) so that no other sweep acts on a stale one."""
    now = now or timezone.now()
    usage = PoolUsage(pool=pool, now=now)
    held = Allocation.objects.filter(pool=pool, admitted_at__isnull=False, released_at__isnull=True)
    for allocation in held.select_related("run"):
        usage.hold(allocation)

    free = pool.capacity - usage.slots_in_use
    ray_limited = False
    ray_free = None if cluster_free_gpus is None else max(0, int(cluster_free_gpus))
    if ray_free is not None and not pool.is_cpu and ray_free < free:
        free, ray_limited = ray_free, True

    pending = Allocation.objects.filter(pool=pool, admitted_at__isnull=True, released_at__isnull=True)
    pending = pending.filter(run__status=RunStatus.QUEUED).select_related("run", "run__team", "run__owner")
    quotas_by_holder: dict[tuple[int, int], list[Quota]] = {}
    decisions: list[Decision] = []
    blocked_by: Allocation | None = None  # the first run that fits its quotas but not the pool
    for position, allocation in enumerate(pending.order_by("-priority", "requested_at", "id"), start=1):
        run = allocation.run
        key = (run.team_id, run.owner_id)
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
                reason = f"Ray cluster has {free} free GPUs left (this run needs {allocation.slots})"
            else:
                reason = (
                    f"pool {pool} full: {pool.capacity - free}/{pool.capacity} {pool.unit} in use"
                    f" (this run needs {allocation.slots})"
                )
        if reason is not None:
            decisions.append(Decision(allocation, position, admit=False, reason=reason))
            continue
        free -= allocation.slots
        usage.hold(allocation)
        decisions.append(
            Decision(allocation, position, admit=True, reason=f"admitted to pool {pool}: {allocation.slots} {pool.unit}")
        )
    return decisions


def admit_pool(pool_id: int, cluster_free_gpus: float | None = None) -> list[Allocation]:
    """Admit the queued runs of one pool that fit now; return their allocations.

    One transaction: the pool's row lock serialises sweeps of the pool (concurrent
    launches and releases only ever free capacity or add to the queue, so they need not
    wait), and each admitted run's driver is enqueued after commit.
    """
    admitted: list[Allocation] = []
    with transaction.atomic():
        # NO KEY UPDATE: serialises sweeps, but lets launches insert allocations that
        # reference the pool meanwhile (a plain FOR UPDATE would block them).
        pool = Pool.objects.select_for_update(no_key=True).get(pk=pool_id)
        for decision in plan_pool(pool, cluster_free_gpus):
            if not decision.admit:
                continue
            allocation = decision.allocation
            try:
                run = run_services.transition(allocation.run_id, RunStatus.ADMITTED, decision.reason)
            except run_services.IllegalTransition:
                # Cancelled after we read the queue; its release closes the allocation.
                continue
            allocation.admitted_at = timezone.now()
            allocation.save(update_fields=["admitted_at"])
            # Its driver goes to the workers after commit (and the reconciler learns when).
            run_services.enqueue_on_commit(run)
            admitted.append(allocation)
    if admitted:
        logger.info("pool %s admitted runs %s", pool, [allocation.run_id for allocation in admitted])
    return admitted


def admit_queued_runs(pool_id: int | None = None, cluster_free_gpus: float | None = None) -> list[int]:
    """One admission sweep: every active pool, or only `pool_id`; returns the admitted
    runs' ids. Safe to run any time, any number of times at once.

    Ray's free GPUs do not yet show runs admitted but not started (their actors are not
    placed yet), nor what this sweep admits in one pool before the next: both are taken
    off before a pool is planned.
    """
    if cluster_free_gpus is not None:
        not_started = Allocation.objects.filter(
            admitted_at__isnull=False, released_at__isnull=True, run__status=RunStatus.ADMITTED
        )
        cluster_free_gpus -= sum(not_started.values_list("gpus", flat=True))
    pools = Pool.objects.filter(active=True)
    if pool_id is not None:
        pools = pools.filter(pk=pool_id)
    admitted: list[int] = []
    for pool in pools.order_by("name"):
        allocations = admit_pool(pool.pk, cluster_free_gpus)
        if cluster_free_gpus is not None:
            cluster_free_gpus -= sum(allocation.gpus for allocation in allocations)
        admitted += [allocation.run_id for allocation in allocations]
    return admitted


def cluster_free_gpus() -> float | None:
    """Ray's free GPUs when this process is attached to a Ray cluster (Ray initialised
    here, or RAY_ADDRESS names a cluster to connect to), else None: trust pool capacity.

    Call it only from the worker's admission task: it may connect to the cluster, and it
    never starts a local Ray."""
    address = os.environ.get("RAY_ADDRESS")
    if "ray" not in sys.modules and not address:
        return None  # Ray was never used here and no cluster is configured
    import ray

    try:
        if not ray.is_initialized():
            if not address:
                return None
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
        return float(ray.available_resources().get("GPU", 0.0))
    except Exception:
        logger.exception("could not read free GPUs from Ray at %s; trusting pool capacity", address or "this process")
        return None
