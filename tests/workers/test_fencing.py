"""Fenced attempts: a driver writes for its attempt only while the platform holds that
attempt current, under the run's row lock; once the reconciler gave it up, every batch
(even an empty flush, the engine's check before a checkpoint) is refused and the sink
raises engine.events.Superseded. Points are one per (run, name, step), a re-sent batch is
stored once, and a heartbeat thread keeps a long step's attempt alive.

The real database throughout; threads get their own connections (transaction=True)."""

import json
import time
from datetime import timedelta

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from engine.events import Checkpoint as CheckpointEvent
from engine.events import Heartbeat, Log, Metrics, Superseded
from runs import attempts, launch, lifecycle, telemetry
from runs.models import Checkpoint, MetricPoint, Run, RunAttempt, RunEvent, RunStatus
from workers.attempt import AttemptFence, AttemptHeartbeat
from workers.sink import DatabaseSink

pytestmark = pytest.mark.django_db

TIMEOUT_S = 60


@pytest.fixture(autouse=True)
def lifecycle_settings(settings, tmp_path, monkeypatch):
    settings.ROLLYARD_RUNS_DIR = tmp_path / "runs"
    settings.ROLLYARD_HEARTBEAT_TIMEOUT_S = TIMEOUT_S
    settings.ROLLYARD_MAX_ATTEMPTS = 3
    # A requeue asks for an admission sweep after commit; these tests admit by hand.
    monkeypatch.setattr("rollyard.dispatch.request_admission", lambda pool_id=None: None)
    monkeypatch.setattr("rollyard.dispatch.enqueue_run", lambda run_id: None)
    return settings


def claimed(run_id: int) -> attempts.Claim:
    if Run.objects.get(pk=run_id).status == RunStatus.QUEUED:
        lifecycle.transition(run_id, RunStatus.ADMITTED, "admitted by the test")
    return attempts.claim_run(run_id, "host-a", 1111)


@pytest.fixture
def claim() -> attempts.Claim:
    user = get_user_model().objects.create_user("dora")
    return claimed(launch.create_run(user, {"name": "fenced", "training": {"steps": 10}}).pk)


def sink_of(claim: attempts.Claim, outage_s: float = 5) -> DatabaseSink:
    return DatabaseSink(AttemptFence(claim.run.pk, claim.attempt.pk, outage_s=outage_s), max_delay_s=3600)


def give_up(run_id: int) -> None:
    """What the reconciler does to a run silent past the timeout: requeue it."""
    later = timezone.now() + timedelta(seconds=TIMEOUT_S + 1)
    assert attempts.requeue_or_fail_lost_run(run_id, later).status == RunStatus.QUEUED


def steps_of(run_id: int, name: str = "reward/mean") -> list[tuple[int, float]]:
    return list(MetricPoint.objects.filter(run_id=run_id, name=name).order_by("step").values_list("step", "value"))


def test_a_superseded_attempts_batch_is_refused_and_nothing_of_it_is_stored(claim):
    sink = sink_of(claim)
    sink.emit(Metrics(step=1, values={"reward/mean": 0.1}))
    sink.emit(Heartbeat(step=1))
    beat_before = Run.objects.get(pk=claim.run.pk).last_heartbeat_at
    events_before = RunEvent.objects.filter(run_id=claim.run.pk).count()

    give_up(claim.run.pk)
    sink.emit(Metrics(step=2, values={"reward/mean": 0.2}))
    with pytest.raises(Superseded, match="no longer current"):
        sink.emit(Heartbeat(step=2))

    run = Run.objects.get(pk=claim.run.pk)
    assert steps_of(run.pk) == [(1, 0.1)]
    assert RunEvent.objects.filter(run=run).count() == events_before
    # The refused heartbeat did not make the lost attempt look alive again.
    assert run.last_heartbeat_at == beat_before and run.current_step == 1
    # Once refused, the sink refuses without asking again.
    with pytest.raises(Superseded):
        sink.emit(Log(message="still here"))


def test_an_empty_flush_asks_the_platform_and_raises_once_the_attempt_is_given_up(claim):
    sink = sink_of(claim)
    sink.flush()  # current: nothing to write, nothing raised

    give_up(claim.run.pk)
    # The engine flushes right before it writes a checkpoint: this is where a superseded
    # driver learns it, with nothing buffered.
    with pytest.raises(Superseded):
        sink.flush()


def test_a_batch_sent_again_is_stored_once(claim):
    batch = [Metrics(step=1, values={"reward/mean": 0.5}), Log(message="step 1"), Heartbeat(step=1)]

    for _ in range(2):  # the second as after a reply lost on the way back
        telemetry.record_events(claim.run.pk, claim.attempt.pk, batch, batch=1)
    telemetry.record_events(claim.run.pk, claim.attempt.pk, [Metrics(step=2, values={"reward/mean": 0.6})], batch=2)

    assert steps_of(claim.run.pk) == [(1, 0.5), (2, 0.6)]
    # One log and one heartbeat row: batch 1's second copy was ignored whole.
    assert sorted(RunEvent.objects.filter(run_id=claim.run.pk).values_list("kind", flat=True)) == ["heartbeat", "log"]
    assert RunAttempt.objects.get(pk=claim.attempt.pk).batches_recorded == 2


def test_a_step_reported_again_keeps_one_point_the_latest(claim):
    record = lambda events: telemetry.record_events(claim.run.pk, claim.attempt.pk, events)  # noqa: E731
    record([Metrics(step=3, values={"reward/mean": 0.3}), Metrics(step=3, values={"reward/mean": 0.4})])
    record([Metrics(step=3, values={"reward/mean": 0.9, "acc/mean": 1.0})])

    # Within a batch and across batches, the last value of (reward/mean, 3) wins.
    assert steps_of(claim.run.pk) == [(3, 0.9)]
    assert MetricPoint.objects.filter(run_id=claim.run.pk).count() == 2  # reward/mean and acc/mean at step 3


def test_a_resumed_attempt_replaces_what_the_lost_one_reported_after_its_checkpoint(claim):
    first = claim.attempt.pk
    folder = attempts.run_dir(claim.run.pk) / "checkpoints" / "step-000002"
    telemetry.record_events(claim.run.pk, first, [Metrics(step=s, values={"reward/mean": s / 10}) for s in (1, 2, 3)])
    telemetry.record_events(claim.run.pk, first, [CheckpointEvent(step=2, path=str(folder), metrics={})])
    give_up(claim.run.pk)

    second = claimed(claim.run.pk)
    # The lost attempt's step 3 is gone: the resumed engine reports it again, from step 2's
    # checkpoint, and only the second attempt may write.
    assert second.attempt.resumed_from_step == 2 and steps_of(claim.run.pk) == [(1, 0.1), (2, 0.2)]
    with pytest.raises(attempts.AttemptSuperseded):
        telemetry.record_events(claim.run.pk, first, [Metrics(step=3, values={"reward/mean": -1.0})])
    telemetry.record_events(claim.run.pk, second.attempt.pk, [Metrics(step=3, values={"reward/mean": 0.9})])

    assert steps_of(claim.run.pk) == [(1, 0.1), (2, 0.2), (3, 0.9)]


def write_complete_checkpoint(run_id: int, step: int) -> None:
    """A checkpoint folder as engine.checkpoint lays one out (the parts its reader checks)."""
    folder = attempts.run_dir(run_id) / "checkpoints" / f"step-{step:06d}"
    (folder / "model").mkdir(parents=True)
    (folder / "trainer_state.pt").write_bytes(b"s" * 100)
    (folder / "checkpoint.json").write_text(json.dumps({"step": step, "metrics": {"val/acc/mean@1": 0.5}}))


def test_a_checkpoint_written_but_never_reported_is_where_the_next_attempt_resumes(claim):
    # The worker reported steps 1..4 and the checkpoint of step 2, wrote the checkpoint of
    # step 4 and died before reporting it. The engine resumes from the newest folder on
    # disk (step 4), so steps 3 and 4 must stay and only what follows step 4 goes.
    first = claim.attempt.pk
    telemetry.record_events(claim.run.pk, first, [Metrics(step=s, values={"reward/mean": s / 10}) for s in (1, 2, 3, 4)])
    write_complete_checkpoint(claim.run.pk, 2)
    telemetry.record_events(claim.run.pk, first, [CheckpointEvent(step=2, path=str(attempts.run_dir(claim.run.pk)), metrics={})])
    write_complete_checkpoint(claim.run.pk, 4)
    give_up(claim.run.pk)

    second = claimed(claim.run.pk)

    assert second.attempt.resumed_from_step == 4
    assert Checkpoint.objects.get(run_id=claim.run.pk, step=4).metrics == {"val/acc/mean@1": 0.5}
    assert [step for step, _ in steps_of(claim.run.pk)] == [1, 2, 3, 4]


@pytest.mark.django_db(transaction=True)
def test_the_heartbeat_beats_while_a_step_runs_and_stops_once_the_attempt_is_given_up(claim):
    fence = AttemptFence(claim.run.pk, claim.attempt.pk, outage_s=5)
    heartbeat = AttemptHeartbeat(fence, every_s=0.1)
    claimed_at = Run.objects.get(pk=claim.run.pk).last_heartbeat_at  # None: a first attempt

    heartbeat.start()
    try:
        time.sleep(1.0)  # one long "step": no event from the engine at all
        alive = Run.objects.get(pk=claim.run.pk).last_heartbeat_at
        assert alive is not None and alive != claimed_at
        # Beats every 0.1 s: the last one is at most a few tenths old, not a second.
        assert (timezone.now() - alive).total_seconds() < 0.5
        assert not fence.is_down

        give_up(claim.run.pk)
        deadline = time.monotonic() + 5
        while not fence.is_down and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fence.is_down and "gave this attempt up" in fence.reason
        given_up = Run.objects.get(pk=claim.run.pk).last_heartbeat_at
        time.sleep(0.5)
        assert Run.objects.get(pk=claim.run.pk).last_heartbeat_at == given_up  # no beat after
        with pytest.raises(Superseded):
            fence.check()
    finally:
        heartbeat.stop()


def backend_pid() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def terminate_backend(pid: int) -> None:
    """What a PostgreSQL restart does to a client's connection, from another connection."""
    import psycopg

    settings_dict = connection.settings_dict
    with psycopg.connect(
        host=settings_dict["HOST"] or "127.0.0.1", port=settings_dict["PORT"] or 5432,
        user=settings_dict["USER"], dbname=settings_dict["NAME"], autocommit=True,
    ) as other:  # fmt: skip
        other.execute("SELECT pg_terminate_backend(%s)", [pid])


@pytest.mark.django_db(transaction=True)
def test_a_write_cut_off_by_a_lost_connection_is_retried_and_stored_once(claim, caplog):
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL: terminates the test's own database connection")
    sink = sink_of(claim)
    terminate_backend(backend_pid())

    sink.emit(Metrics(step=1, values={"reward/mean": 0.5}))
    sink.emit(Heartbeat(step=1))  # fails on the dead connection, reconnects, succeeds

    assert "database unreachable, retrying" in caplog.text
    assert steps_of(claim.run.pk) == [(1, 0.5)]
    assert RunEvent.objects.filter(run_id=claim.run.pk, kind="heartbeat").count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_database_away_longer_than_the_heartbeat_timeout_supersedes_the_attempt(claim):
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL: terminates the test's own database connection")
    # A budget of 0 s: the first lost connection is already longer than the reconciler
    # would wait, so the driver gives the attempt up rather than writing late.
    sink = sink_of(claim, outage_s=0)
    terminate_backend(backend_pid())

    with pytest.raises(Superseded, match="database unreachable"):
        sink.emit(Heartbeat(step=1))


@pytest.mark.django_db(transaction=True)
def test_the_migration_keeps_the_newest_point_of_each_step():
    executor = MigrationExecutor(connection)
    before, after = [("runs", "0005_lifecycle")], [("runs", "0006_fenced_attempts")]
    executor.migrate(before)
    old = executor.loader.project_state(before).apps
    user = old.get_model(settings.AUTH_USER_MODEL).objects.create(username="old")
    team = old.get_model("accounts", "Team").objects.create(name="old-team")
    run = old.get_model("runs", "Run").objects.create(owner_id=user.pk, team_id=team.pk, name="old", spec={})
    Point = old.get_model("runs", "MetricPoint")
    # Step 1 once; step 2 three times (0.2, then a superseded driver's 0.25, then the
    # resumed attempt's 0.3): the newest row, 0.3, is the one to keep. 4 rows → 2.
    for step, value in [(1, 0.1), (2, 0.2), (2, 0.25), (2, 0.3)]:
        Point.objects.create(run_id=run.pk, name="reward/mean", step=step, wall_time=0.0, value=value)

    executor = MigrationExecutor(connection)
    executor.migrate(after)

    assert steps_of(run.pk) == [(1, 0.1), (2, 0.3)]
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())  # back to the latest state
