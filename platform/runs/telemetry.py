"""Telemetry ingest: the engine's events, batch by batch, into metric points, events,
checkpoints and the per-prompt tables (runs.prompts), fenced by the sending attempt.
"""

import json
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from catalog import services as catalog
from engine.events import Checkpoint as CheckpointEvent
from engine.events import Event, Heartbeat, Metrics
from runs import live, prompts, rollups
from runs.attempts import folder_size, lock_current_attempt
from runs.models import Checkpoint, MetricPoint, Run, RunEvent


def _json_safe(event: Event) -> dict[str, Any]:
    # model_dump(mode="json") keeps NaN and inf, which PostgreSQL's jsonb and browsers'
    # JSON.parse reject; pydantic's JSON serialiser writes them as null.
    return json.loads(event.model_dump_json())


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
    current_step (stamping step_advanced_at when it grows) and are folded into the run's
    chart buckets (runs.rollups); a Heartbeat moves
    last_heartbeat_at and current_step; the run's row on the runs list hears of the new
    step and summary at most every runs.live.PROGRESS_INTERVAL_S; a Checkpoint becomes a Checkpoint row (its folder's
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
        points: dict[tuple[str, int], tuple[float, float | None]] = {}  # (name, step) → (wall time, value); the last wins
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
                    points[name, event.step] = (event.wall_time, finite)
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
        # A batch whose metrics already have points at or after its first step: a resumed
        # attempt replaying steps, whose buckets are then recounted, not added to (one
        # index probe per name; a run reporting forward never takes that path).
        replaced = bool(points) and (
            MetricPoint.objects.filter(run=run, name__in={name for name, _ in points}, step__gte=min(s for _, s in points)).exists()
        )
        store_points(run, points)
        rollups.add_points(run, points, replaced)
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
        # The runs list: the row's step and summary columns, throttled per run.
        if live.progress_due(run_id):
            run_row = live.row(run)
            transaction.on_commit(lambda: live.publish_row(run_row), robust=True)


_UPSERT_POINTS = (
    f"INSERT INTO {MetricPoint._meta.db_table} (run_id, name, step, wall_time, value)"
    " SELECT %s, * FROM unnest(%s::text[], %s::integer[], %s::double precision[], %s::double precision[])"
    " ON CONFLICT (run_id, name, step) DO UPDATE SET wall_time = EXCLUDED.wall_time, value = EXCLUDED.value"
)


def store_points(run: Run, points: Mapping[tuple[str, int], tuple[float, float | None]]) -> None:
    """Upsert a batch's points, (name, step) → (wall time, value): one point per (run, name,
    step), the batch's replacing a stored one. On PostgreSQL one statement with an array
    per column (a batch of 10,000 points costs a few milliseconds of Python, where model
    instances and a 5-column VALUES list per row cost a few hundred)."""
    if not points:
        return
    if connection.vendor == "postgresql":
        (names, steps), (walls, values) = zip(*points.keys(), strict=True), zip(*points.values(), strict=True)
        with connection.cursor() as cursor:
            cursor.execute(_UPSERT_POINTS, [run.pk, list(names), list(steps), list(walls), list(values)])
        return
    MetricPoint.objects.bulk_create(
        (MetricPoint(run=run, name=name, step=step, wall_time=wall, value=value) for (name, step), (wall, value) in points.items()),
        batch_size=1000,
        update_conflicts=True,
        unique_fields=["run", "name", "step"],
        update_fields=["wall_time", "value"],
    )
