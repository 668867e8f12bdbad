"""The one place that changes runs. The REST API, the pages, the admin and the workers all
call these functions, so every edge behaves the same.

Side effects (enqueueing the driver, pushing to websockets) happen only after the
transaction commits: a rolled-back launch never starts work or shows a phantom status.
"""

import copy
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import transaction
from django.utils import timezone

from accounts.models import Role, Team
from accounts.permissions import PermissionDenied, require_owner_or_admin, require_role
from accounts.services import default_team
from catalog import services as catalog
from engine.events import Checkpoint as CheckpointEvent
from engine.events import Event, Heartbeat, Metrics
from engine.spec import RunSpec, SpecError
from rollyard.params import NUL_REASON, nul_fields
from runs import live, prompts
from runs.models import (
    TRANSITIONS,
    AttemptOutcome,
    Checkpoint,
    MetricPoint,
    Run,
    RunAttempt,
    RunEvent,
    RunStatus,
    RunStatusChange,
)
from runs.spec_paths import check_spec_paths, check_spec_paths_for_run, parse_server_spec
from quotas import selectors as quota_selectors
from quotas import services as quotas
from quotas.models import DEFAULT_POOL, DEFAULT_PRIORITY
from rollyard import dispatch


User = AbstractBaseUser | AnonymousUser


class RunError(Exception):
    """A request the run's current state or the user's rights refuse."""


class IllegalTransition(RunError):
    """The state machine does not allow this move (e.g. anything out of a terminal state)."""


class RunPermissionDenied(RunError):
    """The user may see the run but not change it."""


class AttemptSuperseded(RunError):
    """A driver wrote for an attempt that is no longer the run's current one: the
    reconciler gave it up (a worker presumed dead) and the run may be another's by now.
    The worker's sink turns it into engine.events.Superseded, which stops the engine."""


# --- checks -----------------------------------------------------------------------------


def check_can_manage(user: User, run: Run) -> None:
    """Members may cancel their own runs, team admins any run of the team, staff any run
    (accounts.permissions)."""
    try:
        require_owner_or_admin(user, run.team, run.owner_id, f"change run #{run.pk}")
    except PermissionDenied as denied:
        raise RunPermissionDenied(str(denied)) from None


def check_can_launch(user: User, team: Team) -> None:
    """Launching needs the member role in the run's team (viewers only read)."""
    try:
        require_role(user, team, Role.MEMBER, "launch runs")
    except PermissionDenied as denied:
        raise RunPermissionDenied(str(denied)) from None


# --- launching ----------------------------------------------------------------------------


def create_run(
    user: AbstractBaseUser,
    spec_data: Mapping[str, Any],
    name: str = "",
    team: Team | None = None,
    retention: Mapping[str, Any] | None = None,
    parent: Run | None = None,
    forked_from: Checkpoint | None = None,
    pool: str = DEFAULT_POOL,
    priority: int = DEFAULT_PRIORITY,
) -> Run:
    """Validate a spec, store the queued run with its fully resolved spec, and put it in
    `pool`'s queue at `priority`; admission (quotas) enqueues its driver when it fits.

    Raises engine.spec.SpecError (with .problems, one (field, reason) per problem) and
    creates nothing when the spec cannot run, or when a `retention` override is bad
    (fields `retention.<key>`, keys of settings.ROLLYARD_RETENTION). `name`, when given,
    overrides the spec's. `team` defaults to accounts.services.default_team(user).
    `parent` records where a clone came from; fork_run also passes `forked_from`.
    Raises quotas.services.RequestRefused, creating nothing, for a run the pool or the
    quotas can never admit.
    """
    team = team or default_team(user)
    check_can_launch(user, team)
    check_no_nul_characters(spec_data, retention)
    data = dict(spec_data) if isinstance(spec_data, Mapping) else spec_data
    if name and isinstance(data, dict):
        data["name"] = name
    data, catalog_inputs = catalog.resolve_references(user, team, data)  # dataset and preset references
    check_spec_paths(user, data)
    spec = parse_server_spec(data)
    check_launch_resources(spec)
    if not spec.name:
        spec = spec.model_copy(update={"name": f"{spec.algorithm.name} on {spec.dataset.name}"})
    policy = resolve_retention(retention)
    pool_row = quotas.check_request_fits(user, team, pool, spec.resources.gpus, priority)

    with transaction.atomic():
        now = timezone.now()
        run = Run.objects.create(
            owner=user,
            team=team,
            name=spec.name,
            spec=spec.model_dump(mode="json"),
            status=RunStatus.QUEUED,
            status_reason=f"launched by {user}",
            total_steps=spec.training.steps,
            retention=policy,
            parent=parent,
            forked_from=forked_from,
            forked_from_step=forked_from.step if forked_from else None,
            created_at=now,
            status_changed_at=now,
            enqueued_at=now,
        )
        RunStatusChange.objects.create(run=run, from_status="", to_status=RunStatus.QUEUED, reason=run.status_reason)
        catalog.record_run_inputs(run, catalog_inputs)
        quotas.queue(run.pk, team, user, pool_row, spec.resources.gpus, priority, requested_at=now)
    return run


def check_no_nul_characters(spec_data: Any, retention: Any) -> None:
    """Raise SpecError naming each spec or retention field whose text holds a NUL (JSON's
    \u0000, YAML's \0): the database cannot store one, and the catalog lookups that come
    first would fail on it as server errors."""
    problems = [(field or "spec", NUL_REASON) for field in nul_fields(spec_data)]
    problems += [(f"retention.{field}" if field else "retention", NUL_REASON) for field in nul_fields(retention)]
    if problems:
        raise SpecError(problems)


def check_launch_resources(spec: RunSpec) -> None:
    """Raise SpecError (field resources.gpus) for more GPUs than a run can use: until
    multi-device training exists (the DeepSpeed issue) the trainer uses one device, and
    a second GPU would be reserved in Ray and counted against quotas, idle."""
    most = settings.ROLLYARD_MAX_GPUS_PER_RUN
    if spec.resources.gpus > most:
        reason = f"multi-device training is not available yet; ask for at most {most} GPU"
        reason += f" (this run asks for {spec.resources.gpus})"
        raise SpecError([("resources.gpus", reason)])


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


# --- the state machine ------------------------------------------------------------------------


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


# --- checkpoint retention policy -------------------------------------------------------------


def resolve_retention(override: Mapping[str, Any] | None) -> dict[str, Any]:
    """settings.ROLLYARD_RETENTION with a launch's overrides applied, checked.

    keep_last ≥ 1 (the newest checkpoint is what a requeued run resumes from), keep_best ≥ 0,
    metric a metric name, mode "max" or "min". Raises SpecError naming each bad key
    (as `retention.<key>`).
    """
    policy = dict(settings.ROLLYARD_RETENTION)
    problems: list[tuple[str, str]] = []
    if override is not None and not isinstance(override, Mapping):
        raise SpecError([("retention", f"expected a mapping, got {type(override).__name__}")])
    for key, value in (override or {}).items():
        if key not in policy:
            problems.append((f"retention.{key}", f"unknown setting; known: {', '.join(policy)}"))
        else:
            policy[key] = value
    for key, least in (("keep_last", 1), ("keep_best", 0)):
        value = policy[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            problems.append((f"retention.{key}", f"must be a whole number ≥ {least}, got {value!r}"))
    if not isinstance(policy["metric"], str) or not policy["metric"]:
        problems.append(("retention.metric", f"must be a metric name, got {policy['metric']!r}"))
    if policy["mode"] not in ("max", "min"):
        problems.append(("retention.mode", f"must be 'max' or 'min', got {policy['mode']!r}"))
    if problems:
        raise SpecError(problems)
    return policy


# --- attempts: claim, requeue, fork ---------------------------------------------------------------


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


def fork_run(
    user: AbstractBaseUser,
    parent: Run,
    step: int,
    overrides: Mapping[str, Any] | None = None,
    name: str = "",
    retention: Mapping[str, Any] | None = None,
) -> Run:
    """A new run that starts from `parent`'s checkpoint at `step`, with the parent's spec
    and `overrides` merged over it (nested mappings merge, other values replace). The
    parent's metrics up to `step` are copied, so the child's curves show where it branched.

    Raises SpecError (fields `step` or spec paths) when the parent has no checkpoint at
    that step still on disk, when the merged spec is invalid, or when it ends at or before
    `step`; RunPermissionDenied unless the user may launch runs in the parent's team (the
    fork lives there; forking leaves the parent untouched, so owning it is not needed).
    """
    spec = merge_spec(parent.spec, overrides or {})
    spec.pop("name", None)
    with transaction.atomic():
        checkpoint = parent.checkpoints.select_for_update().filter(step=step, deleted_at__isnull=True).first()
        if checkpoint is None:
            kept = list(parent.checkpoints.filter(deleted_at__isnull=True).values_list("step", flat=True))
            raise SpecError([("step", f"run #{parent.pk} has no checkpoint at step {step}; it has: {kept or 'none'}")])
        steps = spec.get("training", {}).get("steps", 0) if isinstance(spec.get("training"), dict) else 0
        if isinstance(steps, int) and steps <= step:
            raise SpecError([("training.steps", f"must be above the fork step {step} to train at all, got {steps}")])
        child = create_run(
            user,
            spec,
            name=name or f"{parent.name} (fork @{step})",
            team=parent.team,
            retention=retention if retention is not None else parent.retention,
            parent=parent,
            forked_from=checkpoint,
            pool=quota_selectors.pool_name_of(parent),
        )
        copied = (
            MetricPoint(run=child, name=p.name, step=p.step, wall_time=p.wall_time, value=p.value)
            for p in parent.metric_points.filter(step__lte=step).iterator(chunk_size=5000)
        )
        MetricPoint.objects.bulk_create(copied, batch_size=5000)
        child.current_step = step
        child.save(update_fields=["current_step"])
    return child


def merge_spec(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` laid over it: mappings merge key by key, anything else replaces."""
    merged = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_spec(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _publish_status_on_commit(run: Run) -> None:
    message = {
        "type": "run.status",
        "status": run.status,
        "reason": run.status_reason,
        "cancel_requested": run.cancel_requested,
        "started_at": _iso(run.started_at),
        "finished_at": _iso(run.finished_at),
    }
    # robust: the change is committed; a Redis hiccup must not fail the caller (a driver).
    transaction.on_commit(lambda: live.publish(run.pk, message), robust=True)


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


# --- telemetry ---------------------------------------------------------------------------------


def _json_safe(event: Event) -> dict[str, Any]:
    # model_dump(mode="json") keeps NaN and inf, which PostgreSQL's jsonb and browsers'
    # JSON.parse reject; pydantic's JSON serialiser writes them as null.
    return json.loads(event.model_dump_json())


def folder_size(path: Path) -> int:
    """Bytes in the files under `path` (0 when it is gone)."""
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


def record_events(run_id: int, attempt_id: int, events: Sequence[Event], batch: int | None = None) -> None:
    """Store one batch of a run's engine events, sent by the driver of attempt
    `attempt_id`, in one transaction, then push the batch to the run's watchers after
    commit (one channel-layer message).

    Fenced: under the run's row lock, raises AttemptSuperseded, storing nothing, unless
    the attempt is the run's current one, also for an empty batch (a driver asks so before
    it writes a checkpoint). `batch` is the driver's number for the batch (1, 2, …): one
    at or below the attempt's batches_recorded was stored already (a re-send after a lost
    reply) and is ignored whole.

    Metrics become MetricPoint rows (one per name and step; a point already stored for
    that name and step, by this attempt or an earlier one, is replaced) and refresh run.summary and
    current_step (stamping step_advanced_at when it grows); a Heartbeat moves
    last_heartbeat_at and current_step; a Checkpoint becomes a Checkpoint row (its folder's
    size measured here, on the worker that wrote it); difficulty and samples events go to
    their own tables (runs.prompts); every other event (Heartbeat,
    Checkpoint and Status included, for the log) becomes a RunEvent row. Status events
    do not change the run's status: the driver calls transition() for that.
    Non-finite metric values are stored and sent as null. Raises Run.DoesNotExist.
    """
    with transaction.atomic():
        # The lock also serialises concurrent batches of one run, so summary merges don't race.
        run, attempt = lock_current_attempt(run_id, attempt_id)
        if not events or (batch is not None and batch <= attempt.batches_recorded):
            return
        if batch is not None:
            attempt.batches_recorded = batch
            attempt.save(update_fields=["batches_recorded"])
        points: dict[tuple[str, int], MetricPoint] = {}  # the last of a name and step wins
        rows: list[RunEvent] = []
        summary = dict(run.summary)
        step = run.current_step
        heartbeat: float | None = None
        checkpoints: list[Checkpoint] = []
        payloads = [_json_safe(event) for event in events]
        for event, payload in zip(events, payloads, strict=True):
            if isinstance(event, Metrics):
                for name, value in event.values.items():
                    finite = value if math.isfinite(value) else None
                    points[name, event.step] = MetricPoint(
                        run=run, name=name, step=event.step, wall_time=event.wall_time, value=finite
                    )
                    summary[name] = finite
                step = max(step, event.step)
                continue
            if isinstance(event, Heartbeat):
                step = max(step, event.step)
                heartbeat = max(heartbeat or event.wall_time, event.wall_time)
            if isinstance(event, CheckpointEvent):
                checkpoints.append(
                    Checkpoint(
                        run=run,
                        step=event.step,
                        path=str(event.path),
                        metrics=payload["metrics"],
                        size_bytes=folder_size(Path(event.path)),
                        created_at=datetime.fromtimestamp(event.wall_time, tz=UTC),
                    )
                )
            if event.kind in prompts.STORED_APART:
                continue
            rows.append(
                RunEvent(
                    run=run,
                    kind=event.kind,
                    step=getattr(event, "step", None),
                    wall_time=event.wall_time,
                    payload=payload,
                )
            )
        MetricPoint.objects.bulk_create(
            points.values(),
            batch_size=1000,
            update_conflicts=True,
            unique_fields=["run", "name", "step"],
            update_fields=["wall_time", "value"],
        )
        RunEvent.objects.bulk_create(rows, batch_size=500)
        catalog.record_prompt_results(run_id, events)  # per-prompt history of catalog datasets
        prompts.record_prompt_events(run, events)  # difficulty records and samples (and the catalog's)
        # A step checkpointed again (by an attempt resumed from before it) replaces its row.
        Checkpoint.objects.bulk_create(
            checkpoints,
            update_conflicts=True,
            unique_fields=["run", "step"],
            update_fields=["path", "metrics", "size_bytes", "created_at", "deleted_at"],
        )

        update = ["summary", "current_step"]
        if step > run.current_step:
            run.step_advanced_at = timezone.now()
            update.append("step_advanced_at")
        run.summary, run.current_step = summary, step
        if heartbeat is not None:
            # Never back in time: the driver's heartbeat thread may have stamped it later.
            beat = datetime.fromtimestamp(heartbeat, tz=UTC)
            run.last_heartbeat_at = max(filter(None, [run.last_heartbeat_at, beat]))
            update.append("last_heartbeat_at")
        run.save(update_fields=update)

        message = {"type": "run.events", "events": payloads}
        transaction.on_commit(lambda: live.publish(run_id, message), robust=True)
