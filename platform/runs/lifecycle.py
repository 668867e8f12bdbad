"""A run's state machine: every status change goes through `transition`, and each
waiting run is handed on (`enqueue_on_commit`) from here. The REST API, the pages, the
admin and the workers all call these functions, so every edge behaves the same.

Side effects (enqueueing the driver, releasing the pool's capacity, pushing to
websockets) happen only after the transaction commits: a rolled-back change never
starts work or shows a phantom status.
"""

from datetime import datetime

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import transaction
from django.utils import timezone

from accounts.permissions import PermissionDenied, require_owner_or_admin
from quotas import live as quota_live
from quotas import services as quotas
from rollyard import dispatch
from runs import live
from runs.models import TRANSITIONS, AttemptOutcome, Run, RunStatus, RunStatusChange


User = AbstractBaseUser | AnonymousUser


class RunError(Exception):
    """A request the run's current state or the user's rights refuse."""


class IllegalTransition(RunError):
    """The state machine does not allow this move (e.g. anything out of a terminal state)."""


class RunPermissionDenied(RunError):
    """The user may see the run but not change it."""


def check_can_manage(user: User, run: Run) -> None:
    """Members may cancel their own runs, team admins any run of the team, staff any run
    (accounts.permissions)."""
    try:
        require_owner_or_admin(user, run.team, run.owner_id, f"change run #{run.pk}")
    except PermissionDenied as denied:
        raise RunPermissionDenied(str(denied)) from None


def transition(run_id: int, to_status: RunStatus | str, reason: str = "") -> Run:
    """Move a run to `to_status` if the state machine allows it (models.TRANSITIONS).

    Locks the row, writes a history row, stamps started_at (→ running) or finished_at
    (→ a terminal state), closes the open attempt when the run leaves `running` (as
    `lost` when it goes back to the queue), and tells the run's watchers after commit. Raises
    IllegalTransition otherwise, including for a repeated move (running → running), so
    that a redelivered task cannot claim a run twice. Raises Run.DoesNotExist.
    """
    target = RunStatus(to_status)
    with transaction.atomic():
        run = Run.objects.select_for_update().get(pk=run_id)
        source = RunStatus(run.status)
        if target not in TRANSITIONS[source]:
            if source in RunStatus.TERMINAL:
                raise IllegalTransition(f"run #{run_id} is {source} already; a finished run cannot become {target}")
            raise IllegalTransition(f"run #{run_id} cannot go from {source} to {target}")
        now = timezone.now()
        run.status, run.status_reason, run.status_changed_at = target, reason, now
        update = ["status", "status_reason", "status_changed_at"]
        if target == RunStatus.RUNNING and run.started_at is None:  # the first attempt's start
            run.started_at = now
            update.append("started_at")
        if target in RunStatus.TERMINAL:
            run.finished_at = now
            update.append("finished_at")
        run.save(update_fields=update)
        RunStatusChange.objects.create(run=run, from_status=source, to_status=target, reason=reason, at=now)
        # A finished run releases its allocation (its usage record closes now); a run sent
        # back to the queue releases it and waits again in a new pending one.
        requeued = target == RunStatus.QUEUED and source in (RunStatus.ADMITTED, RunStatus.RUNNING)
        if target in RunStatus.TERMINAL or requeued:
            quotas.release(run_id, requeue=requeued)
        if source == RunStatus.RUNNING:
            outcome = AttemptOutcome.LOST if target == RunStatus.QUEUED else AttemptOutcome(target)
            run.attempts.filter(ended_at__isnull=True).update(ended_at=now, outcome=outcome, reason=reason)
        _publish_status_on_commit(run)
        # The queue and quota pages: a run was admitted, started, finished or went back to the queue.
        quota_live.publish_change_on_commit()
    return run


def request_cancel(user: User, run: Run) -> Run:
    """Cancel a run for `user`: a queued run is cancelled at once; a running one gets
    cancel_requested, which its driver polls between steps before it transitions the run
    itself (the web tier never kills processes). Raises IllegalTransition for a finished
    run and RunPermissionDenied when the user may not change it.
    """
    check_can_manage(user, run)
    with transaction.atomic():
        locked = Run.objects.select_for_update().get(pk=run.pk)
        if locked.status in RunStatus.TERMINAL:
            raise IllegalTransition(f"run #{run.pk} is {locked.status} already; there is nothing to cancel")
        if locked.status in (RunStatus.QUEUED, RunStatus.ADMITTED):
            return transition(run.pk, RunStatus.CANCELLED, f"cancelled by {user}")
        if not locked.cancel_requested:
            locked.cancel_requested = True
            locked.status_reason = f"cancel requested by {user}"
            locked.save(update_fields=["cancel_requested", "status_reason"])
            _publish_status_on_commit(locked)
    return locked


def enqueue_on_commit(run: Run) -> None:
    """Once the transaction commits, hand a waiting run on again (a requeue, or a message
    the reconciler presumes lost): an admitted run's driver goes to the workers, a queued
    run gets an admission sweep (quotas), which enqueues its driver when it fits."""
    run.enqueued_at = timezone.now()
    run.save(update_fields=["enqueued_at"])
    run_id = run.pk
    if run.status == RunStatus.ADMITTED:
        transaction.on_commit(lambda: dispatch.enqueue_run(run_id), robust=True)
    else:
        transaction.on_commit(dispatch.request_admission, robust=True)


def _publish_status_on_commit(run: Run) -> None:
    message = {
        "type": "run.status",
        "status": run.status,
        "reason": run.status_reason,
        "cancel_requested": run.cancel_requested,
        "started_at": _iso(run.started_at),
        "finished_at": _iso(run.finished_at),
    }
    run_row = live.row(run)
    if run.status in RunStatus.TERMINAL:
        live.forget_progress(run.pk)

    def publish() -> None:
        live.publish(run.pk, message)
        live.publish_row(run_row)  # the runs list hears of every status change

    # robust: the change is committed; a Redis hiccup must not fail the caller (a driver).
    transaction.on_commit(publish, robust=True)


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None
