"""A run's attempts: a worker claims an admitted run (`claim_run`), its driver's writes
are fenced by `lock_current_attempt`, and an attempt ends reported by its driver
(`end_attempt`, `give_up_attempt`) or given up by the reconciler
(`requeue_or_fail_lost_run`, `enqueue_again_if_stale`). Checkpoint helpers live here too:
a claim resumes from them.
"""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from engine.spec import SpecError
from runs.lifecycle import RunError, enqueue_on_commit, transition
from runs.models import AttemptOutcome, Checkpoint, Run, RunAttempt, RunStatus
from runs.spec_paths import check_spec_paths_for_run

T = TypeVar("T")


class AttemptSuperseded(RunError):
    """A driver wrote for an attempt that is no longer the run's current one: the
    reconciler gave it up (a worker presumed dead) and the run may be another's by now.
    The worker's sink turns it into engine.events.Superseded, which stops the engine."""


def fail_if_spec_paths_refused(run_id: int) -> None:
    """Check an admitted run's stored spec paths again before a worker claims it
    (runs.spec_paths.check_spec_paths_for_run: the owner may have left the team whose
    dataset it reads, or the operator narrowed the roots while it waited). A refused run
    fails here, naming the field; the claim that follows then finds it failed and
    refuses (IllegalTransition), so no engine ever reads the path. Anything but an
    admitted run is left to the claim's own transition to judge."""
    with transaction.atomic():
        run = Run.objects.select_for_update(of=("self",)).select_related("owner").get(pk=run_id)
        if run.status != RunStatus.ADMITTED:
            return
        try:
            check_spec_paths_for_run(run)
        except SpecError as refused:
            transition(run_id, RunStatus.FAILED, f"refused when a worker claimed it: {refused}")


@dataclass(frozen=True)
class Claim:
    """What a worker needs to drive the run it just claimed."""

    run: Run
    attempt: RunAttempt
    # The run's folder: the engine writes checkpoints there.
    run_dir: Path
    # The parent's checkpoint folder a fork starts from; None otherwise (a fresh start, or
    # a resume from the run's own newest checkpoint, which the engine finds in run_dir).
    resume_from: Path | None


def run_dir(run_id: int) -> Path:
    return Path(settings.ROLLYARD_RUNS_DIR) / str(run_id)


def latest_checkpoint(run: Run) -> Checkpoint | None:
    """The run's newest checkpoint still on disk (retention never deletes it)."""
    return run.checkpoints.filter(deleted_at__isnull=True).order_by("-step").first()


def claim_run(run_id: int, worker_host: str, worker_pid: int) -> Claim:
    """Take an admitted run for one worker: admitted → running and a new attempt, in one
    transaction. The attempt resumes from the run's newest checkpoint, or, for a fork with
    none of its own yet, from the parent's checkpoint it forked at. Metrics and events the
    run recorded after that step are dropped: the resumed engine reports those steps again.

    Raises IllegalTransition unless the run is admitted, so a redelivered message (or one
    of two messages the reconciler sent) can never start a second driver.
    """
    fail_if_spec_paths_refused(run_id)  # a run whose paths are refused now fails, and the claim below refuses it
    with transaction.atomic():
        run = transition(run_id, RunStatus.RUNNING, f"picked up by worker {worker_host} (pid {worker_pid})")
        number = run.attempts.count() + 1
        checkpoint = (adopt_unreported_checkpoint(run) if number > 1 else None) or latest_checkpoint(run) or run.forked_from
        start_step = checkpoint.step if checkpoint else 0
        attempt = RunAttempt.objects.create(
            run=run,
            number=number,
            worker_host=worker_host,
            worker_pid=worker_pid,
            resumed_from=checkpoint,
            resumed_from_step=checkpoint.step if checkpoint else None,
        )
        if attempt.number > 1:
            # Events without a step (logs, status) stay: they tell the earlier attempts' story.
            (run.metric_points.filter(step__gt=start_step) if checkpoint else run.metric_points.all()).delete()
            (run.events.filter(step__gt=start_step) if checkpoint else run.events.filter(step__isnull=False)).delete()
            run.current_step = start_step
            # Being claimed is a sign of life: the reconciler's clock restarts for this attempt.
            run.step_advanced_at = run.last_heartbeat_at = attempt.started_at
            run.save(update_fields=["current_step", "step_advanced_at", "last_heartbeat_at"])
    # The engine resumes from the newest complete checkpoint in run_dir by itself; it needs
    # a folder named only for a fork that has none of its own yet.
    forking = checkpoint is not None and checkpoint.run_id != run.pk
    return Claim(run=run, attempt=attempt, run_dir=run_dir(run_id), resume_from=Path(checkpoint.path) if forking else None)


def adopt_unreported_checkpoint(run: Run) -> Checkpoint | None:
    """The newest complete checkpoint in the run's folder when the database does not know
    it yet, recorded now; else None. A worker lost between writing a checkpoint and
    reporting it leaves such a folder, and the engine resumes from the newest folder on
    disk: the claim must drop the metrics after that step, not after an older one, or the
    steps between would be lost. Call it under the run's row lock."""
    from engine.checkpoint import complete_checkpoints, read_info

    on_disk = complete_checkpoints(run_dir(run.pk))
    known = latest_checkpoint(run)
    if not on_disk or (known is not None and known.step >= on_disk[-1][0]):
        return None
    folder = on_disk[-1][1]
    info = read_info(folder)
    checkpoint, _ = Checkpoint.objects.update_or_create(
        run=run,
        step=info.step,
        defaults={"path": str(folder), "metrics": info.metrics, "size_bytes": folder_size(folder), "deleted_at": None},
    )
    return checkpoint


def lock_current_attempt(run_id: int, attempt_id: int) -> tuple[Run, RunAttempt]:
    """Lock the run's row and return it with the attempt, or raise AttemptSuperseded when
    the attempt is not the run's open one. Every write a driver makes goes through here
    inside its transaction: the reconciler closes attempts under the same lock, so a
    write either lands before the attempt is given up or is refused after."""
    run = Run.objects.select_for_update().get(pk=run_id)
    attempt = RunAttempt.objects.filter(pk=attempt_id, run_id=run_id).first()
    if attempt is None or attempt.ended_at is not None:
        closed = f"{attempt.outcome}: {attempt.reason}" if attempt else "no such attempt"
        raise AttemptSuperseded(f"run #{run_id}: attempt #{attempt_id} is no longer current ({closed})")
    return run, attempt


def while_current(run_id: int, attempt_id: int, action: Callable[[], T]) -> T:
    """`action()` run holding the run's row lock while the attempt is current, or
    AttemptSuperseded. The reconciler gives attempts up under the same lock, so what
    `action` does (a driver renaming its checkpoint into place) happens before the
    attempt is given up or not at all."""
    with transaction.atomic():
        lock_current_attempt(run_id, attempt_id)
        return action()


def end_attempt(attempt_id: int, to_status: RunStatus | str, reason: str) -> Run | None:
    """The driver of an attempt reports the run's end (succeeded, failed, cancelled).
    Returns None, changing nothing, when the attempt is no longer the run's live one: the
    reconciler presumed its worker dead and another attempt may own the run by now."""
    with transaction.atomic():
        run_id = RunAttempt.objects.values_list("run_id", flat=True).get(pk=attempt_id)
        try:
            lock_current_attempt(run_id, attempt_id)
        except AttemptSuperseded:
            return None
        return transition(run_id, to_status, reason)


def keep_attempt_alive(attempt_id: int) -> bool:
    """A driver's heartbeat, sent every few seconds while its steps run (a step may last
    longer than the reconciler's timeout): stamps the run's last heartbeat if the attempt
    is still current. Returns False, stamping nothing, once it is not."""
    with transaction.atomic():
        run_id = RunAttempt.objects.values_list("run_id", flat=True).filter(pk=attempt_id).first()
        try:
            run, _ = lock_current_attempt(run_id, attempt_id)
        except (AttemptSuperseded, Run.DoesNotExist):  # given up, or the run was deleted
            return False
        run.last_heartbeat_at = timezone.now()
        run.save(update_fields=["last_heartbeat_at"])
    return True


def set_aside_stale_run_dir(claim: Claim) -> Path | None:
    """Before a run's first attempt, its folder must not exist: one left by an earlier
    database that reused this id would make the engine resume someone else's checkpoint.
    Such a folder is renamed, never deleted. Returns where it went, if anywhere."""
    if claim.attempt.number != 1 or not claim.run_dir.exists():
        return None
    aside = claim.run_dir.with_name(f"{claim.run_dir.name}.stale-{timezone.now():%Y%m%dT%H%M%S}")
    claim.run_dir.rename(aside)
    return aside


def attempt_is_current(attempt_id: int) -> bool:
    """Is this attempt still the run's live one? False once the reconciler gave up on it
    (its worker was presumed dead) or the run ended. A read without the lock, for
    reports; a driver's writes are fenced by lock_current_attempt instead."""
    return RunAttempt.objects.filter(pk=attempt_id, ended_at__isnull=True).exists()


def requeue_or_fail_lost_run(run_id: int, now: datetime) -> Run | None:
    """If the run is still running and its last sign of life (heartbeat, else its start)
    is older than settings.ROLLYARD_HEARTBEAT_TIMEOUT_S at `now`, its worker is presumed
    dead: close its attempt as lost and requeue the run (it resumes from its newest
    checkpoint) while it has attempts left (settings.ROLLYARD_MAX_ATTEMPTS), else fail it.
    Either way the reason names the lost heartbeat and the attempt count. Returns the run,
    or None when it needed nothing (checked under the row lock: a heartbeat may have
    arrived since the caller looked)."""
    with transaction.atomic():
        run = Run.objects.select_for_update().get(pk=run_id)
        last_sign = run.last_heartbeat_at or run.started_at
        silent_s = (now - last_sign).total_seconds() if last_sign else 0.0
        if run.status != RunStatus.RUNNING or silent_s <= settings.ROLLYARD_HEARTBEAT_TIMEOUT_S:
            return None
        return _requeue_or_fail(run, f"worker lost: no heartbeat for {silent_s:.0f} s", now)


def give_up_attempt(attempt_id: int, cause: str) -> Run | None:
    """The driver of a current attempt lost what it drives the run on (its trainer's Ray
    actor died) and the run can go on elsewhere: close the attempt as lost and requeue the
    run, or fail it when no attempts are left, as for a lost worker; `cause` opens the
    reason. Returns None, changing nothing, when the attempt is no longer current."""
    with transaction.atomic():
        run_id = RunAttempt.objects.values_list("run_id", flat=True).get(pk=attempt_id)
        try:
            run, _ = lock_current_attempt(run_id, attempt_id)
        except AttemptSuperseded:
            return None
        return _requeue_or_fail(run, cause, timezone.now())


def _requeue_or_fail(run: Run, lost: str, now: datetime) -> Run:
    """Close the running run's open attempt as lost; requeue the run (it resumes from its
    newest checkpoint) while it has attempts left, else fail it. The reason is `lost`,
    the attempt count and what happens next. Call it under the run's row lock."""
    attempts = run.attempts.count()
    limit = settings.ROLLYARD_MAX_ATTEMPTS
    lost = f"{lost} on attempt {attempts} of {limit}"
    if attempts >= limit:
        reason = f"{lost}; no attempts left"
        # The attempt was lost, whatever the run's fate.
        run.attempts.filter(ended_at__isnull=True).update(ended_at=now, outcome=AttemptOutcome.LOST, reason=reason)
        return transition(run.pk, RunStatus.FAILED, reason)
    checkpoint = latest_checkpoint(run) or run.forked_from
    resume = f"resumes from the checkpoint of step {checkpoint.step}" if checkpoint else "starts over (no checkpoint)"
    # Back in the queue, admission (quotas) admits it again and enqueues its driver.
    return transition(run.pk, RunStatus.QUEUED, f"{lost}; requeued, {resume}")


def enqueue_again_if_stale(run_id: int, now: datetime) -> Run | None:
    """A queued or admitted run whose driver message went out more than
    settings.ROLLYARD_ENQUEUE_TIMEOUT_S before `now` and was never claimed (the broker was
    down at commit, or the message was lost): send it again. A duplicate is harmless,
    claim_run lets only one driver through. Returns the run, or None when it needed nothing."""
    with transaction.atomic():
        run = Run.objects.select_for_update().get(pk=run_id)
        sent_at = max(filter(None, [run.enqueued_at, run.status_changed_at]))
        waited_s = (now - sent_at).total_seconds()
        if run.status not in (RunStatus.QUEUED, RunStatus.ADMITTED) or waited_s <= settings.ROLLYARD_ENQUEUE_TIMEOUT_S:
            return None
        enqueue_on_commit(run)
    return run


def folder_size(path: Path) -> int:
    """Bytes in the files under `path` (0 when it is gone)."""
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())
