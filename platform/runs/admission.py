"""Admission sweeps: runs admit what quotas say fits (`quotas.admission.plan_pool`).

Quotas answer what fits; this module acts on it: it moves each run that fits from queued
to admitted, marks its allocation held and enqueues its driver after commit. The worker's
admission task (workers.tasks.admit_runs) calls `admit_queued_runs` with Ray's free GPUs.
"""

import logging

from django.db import transaction

from quotas import services as quotas
from quotas.admission import plan_pool
from quotas.models import Allocation, Pool
from runs.models import RunStatus
from runs.lifecycle import IllegalTransition, enqueue_on_commit, transition

logger = logging.getLogger(__name__)


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
                run = transition(allocation.run_id, RunStatus.ADMITTED, decision.reason)
            except IllegalTransition:
                # Cancelled after we read the queue; its release closes the allocation.
                continue
            quotas.mark_admitted(allocation)
            # Its driver goes to the workers after commit (and the reconciler learns when).
            enqueue_on_commit(run)
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
