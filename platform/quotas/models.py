"""Accelerator pools, quotas on them, and the allocation ledger.

A run asks one pool for capacity. Its `Allocation` row is its place in that pool's queue
while it waits (admitted_at empty), its hold on the pool's capacity once admitted, and,
closed (released_at set), the usage record GPU-hours are computed from.

Units: on a GPU pool capacity and quotas count GPUs and a run holds as many as it asks
for. On a CPU pool (machines without GPUs) they count run slots: every run holds exactly
one slot, so `capacity` is how many CPU runs go at once and a quota's "concurrent GPUs"
is how many runs a team or user may have going there. CPU runs use no GPU-hours.

Only `quotas.services` writes to these tables; `quotas.admission` reads them.
"""

from datetime import datetime, timedelta

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from rollyard.text import count

# The pool a launch goes to when it names none, created by migration 0002 (and again by
# quotas.services.check_request_fits should it be deleted). Two CPU runs at once by
# default, so the demo's run starts at once; site admins change it in the admin.
DEFAULT_POOL = "cpu"
DEFAULT_CPU_POOL_SLOTS = 2
# Higher goes first in a pool's queue. Above the default only with the team's admin role
# (quotas.services.check_request_fits): otherwise every member would launch at the top.
DEFAULT_PRIORITY = 0
MIN_PRIORITY, MAX_PRIORITY = -100, 100


class Accelerator(models.TextChoices):
    CPU = "cpu", "CPU (run slots)"
    GPU = "gpu", "GPU"


class Pool(models.Model):
    name = models.SlugField(max_length=50, unique=True)
    accelerator = models.CharField(max_length=8, choices=Accelerator.choices, default=Accelerator.GPU)
    gpu_type = models.CharField(max_length=50, blank=True, default="", help_text='e.g. "H100"; empty for a CPU pool')
    capacity = models.PositiveIntegerField(help_text="GPUs in the pool; for a CPU pool, runs that may go at once")
    # An inactive pool takes no new launches and admits nothing; its running runs go on.
    active = models.BooleanField(default=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def is_cpu(self) -> bool:
        return self.accelerator == Accelerator.CPU

    @property
    def unit_one(self) -> str:
        """What capacity and quotas count here, one of it: "run slot" or "GPU"."""
        return "run slot" if self.is_cpu else "GPU"

    @property
    def unit(self) -> str:
        """What capacity and quotas count here, in the plural ("run slots", "GPUs")."""
        return self.unit_one + "s"

    def count(self, n: int) -> str:
        """`n` of what this pool counts, for messages: "1 run slot", "4 GPUs"."""
        return count(n, self.unit_one)

    def slots_for(self, gpus: int) -> int:
        """How much of this pool's capacity a run asking for `gpus` GPUs holds."""
        return 1 if self.is_cpu else gpus


class Quota(models.Model):
    """Limits of one team or one user (exactly one of them) on one pool. An empty limit
    means no limit of that kind. A run must fit both its team's and its owner's quota."""

    pool = models.ForeignKey(Pool, on_delete=models.CASCADE, related_name="quotas")
    team = models.ForeignKey("accounts.Team", null=True, blank=True, on_delete=models.CASCADE, related_name="quotas")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="quotas"
    )
    max_concurrent_gpus = models.PositiveIntegerField(
        null=True, blank=True, help_text="GPUs held at once (on a CPU pool: runs at once)"
    )
    max_gpus_per_run = models.PositiveIntegerField(null=True, blank=True)
    gpu_hours_per_period = models.FloatField(null=True, blank=True, help_text="GPU-hours in any window of period_days")
    period_days = models.PositiveIntegerField(default=30)

    class Meta:
        ordering = ["pool__name", "team__name", "user__username"]
        constraints = [
            models.CheckConstraint(
                condition=Q(team__isnull=False, user__isnull=True) | Q(team__isnull=True, user__isnull=False),
                name="quota_team_xor_user",
                violation_error_message="a quota belongs to exactly one of a team or a user",
            ),
            models.UniqueConstraint(fields=["pool", "team"], condition=Q(team__isnull=False), name="quota_pool_team"),
            models.UniqueConstraint(fields=["pool", "user"], condition=Q(user__isnull=False), name="quota_pool_user"),
            models.CheckConstraint(
                condition=Q(gpu_hours_per_period__isnull=True) | Q(gpu_hours_per_period__gte=0),
                name="quota_gpu_hours_not_negative",
            ),
            models.CheckConstraint(condition=Q(period_days__gte=1), name="quota_period_at_least_a_day"),
        ]

    def __str__(self) -> str:
        return f"{self.holder} on {self.pool}"

    @property
    def holder(self) -> str:
        """Who the quota limits, as messages name it: "team ml" or "user alice"."""
        return f"team {self.team}" if self.team_id else f"user {self.user}"

    def period_start(self, now: datetime) -> datetime:
        return now - timedelta(days=self.period_days)


class Allocation(models.Model):
    """One admission attempt of a run in a pool: pending (queued), held, then released.

    A run has at most one open (unreleased) allocation. Requeued after its worker
    vanished, it gets a new pending one and keeps the old one as a usage record.
    """

    run = models.ForeignKey("runs.Run", on_delete=models.CASCADE, related_name="allocations")
    pool = models.ForeignKey(Pool, on_delete=models.PROTECT, related_name="allocations")
    # Whose quotas it counts against: the run's team and owner, copied at queue time so
    # that admission and usage read the ledger alone, never the runs.
    team = models.ForeignKey("accounts.Team", on_delete=models.PROTECT, related_name="allocations")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="allocations")
    # GPUs the run uses (0 on a CPU pool), for GPU-hours.
    gpus = models.PositiveIntegerField()
    # What it holds of the pool's capacity (Pool.slots_for): its GPUs, or one CPU run slot.
    slots = models.PositiveIntegerField()
    # Higher goes first; equal priorities go oldest first.
    priority = models.IntegerField(default=0)
    requested_at = models.DateTimeField(default=timezone.now)
    admitted_at = models.DateTimeField(null=True, blank=True)
    released_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-priority", "requested_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["run"], condition=Q(released_at__isnull=True), name="allocation_one_open_per_run"),
        ]
        indexes = [models.Index(fields=["pool", "released_at", "admitted_at"], name="allocation_pool_open")]

    def __str__(self) -> str:
        return f"run #{self.run_id} on {self.pool_id}: {count(self.slots, 'slot')}"

    @property
    def is_pending(self) -> bool:
        return self.admitted_at is None and self.released_at is None

    def held_at(self, moment: datetime) -> bool:
        """Did this allocation hold its pool's capacity at `moment`?"""
        return self.admitted_at is not None and self.admitted_at <= moment and (
            self.released_at is None or moment < self.released_at
        )

    def gpu_hours(self, since: datetime, until: datetime) -> float:
        """GPUs × hours this allocation was held within [since, until]."""
        if self.admitted_at is None or not self.gpus:
            return 0.0
        start = max(self.admitted_at, since)
        end = min(self.released_at or until, until)
        if end <= start:
            return 0.0
        return self.gpus * (end - start).total_seconds() / 3600
