"""Changes to pools, quotas and the allocation ledger. The runs services, the REST API and
the admin call these, so a launch, a quota edit and a finished run behave the same from
every edge. Quotas know nothing of runs but their ids: runs call in, never the reverse.

- `check_request_fits` refuses at submit a launch that can never fit (naming the limit);
- `queue` puts a new run in its pool's queue;
- `mark_admitted` and `release` move its allocation along (runs.admission admits,
  runs.lifecycle.transition releases when the run finishes or goes back to the queue);
- `save_pool_or_quota` / `delete_pool_or_quota` are site admins' edits.
Each change that may let a run start schedules an admission sweep of the pool after
commit (`rollyard.dispatch`).
"""

from datetime import datetime

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import transaction
from django.db.models import ProtectedError
from django.utils import timezone

from accounts.models import Role, Team
from accounts.permissions import PermissionDenied, require_role
from quotas import live
from quotas.admission import gpu_hours_exhausted, quotas_of
from quotas.models import (
    DEFAULT_CPU_POOL_SLOTS,
    DEFAULT_POOL,
    DEFAULT_PRIORITY,
    MAX_PRIORITY,
    MIN_PRIORITY,
    Accelerator,
    Allocation,
    Pool,
    Quota,
)
from rollyard import dispatch
from rollyard.text import count

User = AbstractBaseUser | AnonymousUser


class RequestRefused(Exception):
    """A launch that can never fit its pool or quotas. `problems` holds one (field,
    message) per limit at fault; each message names the limit and its value."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(message for _, message in problems))


class PoolInUse(Exception):
    """A pool with runs on record cannot be deleted (the ledger keeps it); deactivate it."""


# --- submit -----------------------------------------------------------------------------


def check_request_fits(user: AbstractBaseUser, team: Team, pool_name: str, gpus: int, priority: int) -> Pool:
    """The pool a launch of `gpus` GPUs by `user` for `team` goes to, once it is sure the
    run could ever be admitted there. Raises RequestRefused naming every limit it can
    never fit (GPUs beyond the pool, its GPUs-per-run or concurrent quota, GPU-hours of the
    period used up, an unknown or inactive pool, GPUs asked of the CPU pool), and
    accounts.permissions.PermissionDenied for a priority above the default without the
    team's admin role. Stores nothing.
    """
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise RequestRefused([("priority", f"priority must be between {MIN_PRIORITY} and {MAX_PRIORITY}; got {priority}")])
    if priority > DEFAULT_PRIORITY:
        require_role(user, team, Role.ADMIN, f"launch with priority {priority} (above {DEFAULT_PRIORITY})")

    pool = Pool.objects.filter(name=pool_name).first()
    if pool is None and pool_name == DEFAULT_POOL:
        # Launches without a pool must always have somewhere to go (a test database's
        # flush removes what migration 0002 created, for one).
        pool, _ = Pool.objects.get_or_create(
            name=DEFAULT_POOL, defaults={"accelerator": Accelerator.CPU, "capacity": DEFAULT_CPU_POOL_SLOTS}
        )
    if pool is None or not pool.active:
        open_pools = ", ".join(Pool.objects.filter(active=True).values_list("name", flat=True)) or "none"
        state = "unknown" if pool is None else "inactive"
        raise RequestRefused([("pool", f"{state} pool '{pool_name}'; pools open to launches: {open_pools}")])
    if pool.is_cpu and gpus:
        raise RequestRefused(
            [("resources.gpus", f"pool {pool} has no GPUs; this run asks for {gpus}: choose a GPU pool or set 0")]
        )
    if not pool.is_cpu and not gpus:
        raise RequestRefused([("resources.gpus", f"pool {pool} is a GPU pool; ask for at least 1 GPU in resources.gpus")])

    slots = pool.slots_for(gpus)
    problems: list[tuple[str, str]] = []
    if slots > pool.capacity:
        problems.append(("resources.gpus", f"pool {pool} has {pool.count(pool.capacity)} in all; this run needs {slots}"))
    now = timezone.now()
    for quota in quotas_of(pool, team.pk, user.pk):
        if quota.max_gpus_per_run is not None and gpus > quota.max_gpus_per_run:
            problems.append(
                (
                    "resources.gpus",
                    f"{quota.holder} quota on {pool} allows at most {count(quota.max_gpus_per_run, 'GPU')} per run; "
                    f"this run asks for {gpus}",
                )
            )
        if quota.max_concurrent_gpus is not None and slots > quota.max_concurrent_gpus:
            problems.append(
                (
                    "resources.gpus",
                    f"{quota.holder} quota on {pool} allows {pool.count(quota.max_concurrent_gpus)} at once; "
                    f"this run needs {slots}",
                )
            )
        if exhausted := gpu_hours_exhausted(quota, now):
            problems.append(("pool", exhausted))
    if problems:
        raise RequestRefused(problems)
    return pool


def queue(
    run_id: int, team: Team, user: AbstractBaseUser, pool: Pool, gpus: int, priority: int, requested_at: datetime
) -> Allocation:
    """Put a new run in its pool's queue (a pending allocation counted against `team`'s
    and `user`'s quotas), in the caller's transaction, and sweep the pool after commit.
    `pool` comes from check_request_fits."""
    allocation = Allocation.objects.create(
        run_id=run_id,
        pool=pool,
        team=team,
        user=user,
        gpus=gpus,
        slots=pool.slots_for(gpus),
        priority=priority,
        requested_at=requested_at,
    )
    dispatch.sweep_on_commit(pool.pk)
    live.publish_change_on_commit()  # the queue page lists it
    return allocation


def mark_admitted(allocation: Allocation) -> None:
    """The pending allocation now holds its pool's capacity (runs.admission.admit_pool,
    under the pool's row lock, once the run is admitted)."""
    allocation.admitted_at = timezone.now()
    allocation.save(update_fields=["admitted_at"])


def release(run_id: int, requeue: bool) -> None:
    """Close the run's open allocation: the usage record ends now. With `requeue` (the run
    goes back to the queue: its worker vanished, or its admission was taken back) an
    admitted allocation is followed by a new pending one that keeps its place (same
    priority and request time). Either frees capacity, so the pool is swept after commit.
    Call it inside the transaction that changes the run's status."""
    allocation = Allocation.objects.select_for_update().filter(run_id=run_id, released_at__isnull=True).first()
    if allocation is None:
        return  # a run stored before pools existed, or by a test without the launch service
    allocation.released_at = timezone.now()
    allocation.save(update_fields=["released_at"])
    if requeue and allocation.admitted_at is not None:
        Allocation.objects.create(
            run_id=run_id,
            pool_id=allocation.pool_id,
            team_id=allocation.team_id,
            user_id=allocation.user_id,
            gpus=allocation.gpus,
            slots=allocation.slots,
            priority=allocation.priority,
            requested_at=allocation.requested_at,
        )
    dispatch.sweep_on_commit(allocation.pool_id)


# --- site admins' edits --------------------------------------------------------------------


def check_can_manage_quotas(user: User) -> None:
    if not (user.is_authenticated and user.is_staff):
        raise PermissionDenied("only site admins may change pools and quotas; ask one to change your team's limits")


def save_pool_or_quota(user: User, limits: Pool | Quota) -> Pool | Quota:
    """Validate (model constraints included) and store a site admin's pool or quota.
    A raised limit may let waiting runs start: the pool is swept after commit. Raises
    PermissionDenied for anyone but staff and django.core.exceptions.ValidationError."""
    check_can_manage_quotas(user)
    limits.full_clean()
    with transaction.atomic():
        limits.save()
        dispatch.sweep_on_commit(limits.pk if isinstance(limits, Pool) else limits.pool_id)
        live.publish_change_on_commit()  # the waiting runs' reasons may read otherwise now
    return limits


def delete_pool_or_quota(user: User, limits: Pool | Quota) -> None:
    """Delete a quota (its holder is then unlimited in the pool) or a pool nothing was
    ever allocated in (pools with history are deactivated instead: the ledger keeps them).
    Raises PermissionDenied for anyone but staff, PoolInUse for a pool with history."""
    check_can_manage_quotas(user)
    with transaction.atomic():
        pool_id = limits.pk if isinstance(limits, Pool) else limits.pool_id
        try:
            limits.delete()
        except ProtectedError:
            raise PoolInUse(f"pool {limits} has runs on record; deactivate it instead (active: false)") from None
        if isinstance(limits, Quota):
            dispatch.sweep_on_commit(pool_id)
        live.publish_change_on_commit()
