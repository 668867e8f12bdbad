"""The one place that changes runs. The REST API, the pages, the admin and the workers all
call these functions, so every edge behaves the same.

Side effects (enqueueing the driver, pushing to websockets) happen only after the
transaction commits: a rolled-back launch never starts work or shows a phantom status.
"""

import json
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import transaction
from django.utils import timezone

from accounts.models import Role, Team
from accounts.permissions import PermissionDenied, require_owner_or_admin, require_role
from accounts.services import default_team
from engine.events import Event, Heartbeat, Metrics
from engine.spec import parse_spec
from runs import live
from runs.models import TRANSITIONS, MetricPoint, Run, RunEvent, RunStatus, RunStatusChange
from workers import dispatch


User = AbstractBaseUser | AnonymousUser


class RunError(Exception):
    """A request the run's current state or the user's rights refuse."""


class IllegalTransition(RunError):
    """The state machine does not allow this move (e.g. anything out of a terminal state)."""


class RunPermissionDenied(RunError):
    """The user may see the run but not change it."""


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


def create_run(user: AbstractBaseUser, spec_data: Mapping[str, Any], name: str = "", team: Team | None = None) -> Run:
    """Validate a spec, store the queued run with its fully resolved spec, and enqueue its
    driver once the transaction commits.

    Raises engine.spec.SpecError (with .problems, one (field, reason) per problem) and
    creates nothing when the spec cannot run. `name`, when given, overrides the spec's.
    `team` defaults to accounts.services.default_team(user).
    """
    team = team or default_team(user)
    check_can_launch(user, team)
    data = dict(spec_data) if isinstance(spec_data, Mapping) else spec_data
    if name and isinstance(data, dict):
        data["name"] = name
    spec = parse_spec(data)
    if not spec.name:
        spec = spec.model_copy(update={"name": f"{spec.algorithm.name} on {spec.dataset.name}"})

    with transaction.atomic():
        run = Run.objects.create(
            owner=user,
            team=team or default_team(user),
            name=spec.name,
            spec=spec.model_dump(mode="json"),
            status=RunStatus.QUEUED,
            status_reason=f"launched by {user}",
            total_steps=spec.training.steps,
        )
        RunStatusChange.objects.create(run=run, from_status="", to_status=RunStatus.QUEUED, reason=run.status_reason)
        run_id = run.pk
        # robust: the run is committed either way; if the broker is down the API still
        # answers 201 and the queued run waits for the reconciler instead of a 500.
        transaction.on_commit(lambda: dispatch.enqueue_run(run_id), robust=True)
    return run


# --- the state machine ------------------------------------------------------------------------


def transition(run_id: int, to_status: RunStatus | str, reason: str = "") -> Run:
    """Move a run to `to_status` if the state machine allows it (models.TRANSITIONS).

    Locks the row, writes a history row, stamps started_at (→ running) or finished_at
    (→ a terminal state), and tells the run's watchers after commit. Raises
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
        run.status, run.status_reason = target, reason
        update = ["status", "status_reason"]
        if target == RunStatus.RUNNING:
            run.started_at = now
            update.append("started_at")
        if target in RunStatus.TERMINAL:
            run.finished_at = now
            update.append("finished_at")
        run.save(update_fields=update)
        RunStatusChange.objects.create(run=run, from_status=source, to_status=target, reason=reason, at=now)
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
        if locked.status == RunStatus.QUEUED:
            return transition(run.pk, RunStatus.CANCELLED, f"cancelled by {user}")
        if not locked.cancel_requested:
            locked.cancel_requested = True
            locked.status_reason = f"cancel requested by {user}"
            locked.save(update_fields=["cancel_requested", "status_reason"])
            _publish_status_on_commit(locked)
    return locked


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


def record_events(run_id: int, events: Sequence[Event]) -> None:
    """Store one batch of a run's engine events in one transaction, then push the batch to
    the run's watchers after commit (one channel-layer message).

    Metrics become MetricPoint rows (one per name) and refresh run.summary and
    current_step; a Heartbeat moves last_heartbeat_at and current_step; every other event
    (Heartbeat and Status included, for the log) becomes a RunEvent row. Status events
    do not change the run's status: the driver calls transition() for that.
    Non-finite metric values are stored and sent as null. Raises Run.DoesNotExist.
    """
    if not events:
        return
    with transaction.atomic():
        # The lock serialises concurrent batches of one run, so summary merges don't race.
        run = Run.objects.select_for_update().get(pk=run_id)
        points: list[MetricPoint] = []
        rows: list[RunEvent] = []
        summary = dict(run.summary)
        step = run.current_step
        heartbeat: float | None = None
        payloads = [_json_safe(event) for event in events]
        for event, payload in zip(events, payloads, strict=True):
            if isinstance(event, Metrics):
                for name, value in event.values.items():
                    finite = value if math.isfinite(value) else None
                    points.append(MetricPoint(run=run, name=name, step=event.step, wall_time=event.wall_time, value=finite))
                    summary[name] = finite
                step = max(step, event.step)
                continue
            if isinstance(event, Heartbeat):
                step = max(step, event.step)
                heartbeat = max(heartbeat or event.wall_time, event.wall_time)
            rows.append(
                RunEvent(
                    run=run,
                    kind=event.kind,
                    step=getattr(event, "step", None),
                    wall_time=event.wall_time,
                    payload=payload,
                )
            )
        MetricPoint.objects.bulk_create(points, batch_size=1000)
        RunEvent.objects.bulk_create(rows, batch_size=500)

        run.summary, run.current_step = summary, step
        update = ["summary", "current_step"]
        if heartbeat is not None:
            run.last_heartbeat_at = datetime.fromtimestamp(heartbeat, tz=UTC)
            update.append("last_heartbeat_at")
        run.save(update_fields=update)

        message = {"type": "run.events", "events": payloads}
        transaction.on_commit(lambda: live.publish(run_id, message), robust=True)
