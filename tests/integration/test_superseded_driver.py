"""A run's real driver (the Celery task's body, in a thread of this process, engine
in-process, the real database) against the reconciler.

1. The reconciler gives the attempt up mid-run (from another connection, as its sweep
   would): the driver notices, stops before its next checkpoint and writes nothing more
   (no point, no event, no status, no checkpoint folder in the shared run folder).
2. A step longer than the heartbeat timeout is no longer taken for a dead worker: the
   driver's heartbeat thread beats while the step runs, and a reconciler sweeping all
   the while requeues nothing.
"""

import threading
import time
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.utils import timezone

from engine.recipes.sync import SyncRecipe

from runs.admission import admit_queued_runs
from runs import attempts
from runs import launch as run_launch
from runs.models import Checkpoint, MetricPoint, Run, RunAttempt, RunEvent, RunStatus
from runs.reconciler import reconcile_runs
from workers import sink as sink_module
from workers import tasks

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]

SMALL = {"rollout": {"prompts_per_step": 2, "n": 2, "max_new_tokens": 32}, "resources": {"executor": "inprocess"}}


@pytest.fixture
def platform(settings, tmp_path, monkeypatch) -> list[int]:
    """Run folders under tmp_path; no broker: admission is called here, and the runs it
    hands to workers are collected (this test drives them)."""
    settings.ROLLYARD_RUNS_DIR = tmp_path / "runs"
    settings.ROLLYARD_MAX_ATTEMPTS = 3
    settings.ROLLYARD_HEARTBEAT_EVERY_S = 0.2
    enqueued: list[int] = []
    monkeypatch.setattr("rollyard.dispatch.enqueue_run", enqueued.append)
    monkeypatch.setattr("rollyard.dispatch.request_admission", lambda pool_id=None: None)
    return enqueued


def launch(spec: dict, enqueued: list[int]) -> int:
    user = get_user_model().objects.create_user(f"erin-{time.monotonic_ns()}")
    run_id = run_launch.create_run(user, spec).pk
    admit_queued_runs()
    assert enqueued == [run_id]
    return run_id


def drive_in_a_thread(run_id: int) -> tuple[threading.Thread, dict]:
    """execute_run(run_id) in a thread with its own database connection; its return
    value (or exception) lands in the dict."""
    result: dict = {}

    def body() -> None:
        try:
            result["outcome"] = tasks.execute_run(run_id)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            result["error"] = exc
        finally:
            connection.close()

    thread = threading.Thread(target=body, name=f"driver-{run_id}", daemon=True)
    thread.start()
    return thread, result


def checkpoint_folders(run_id: int) -> list[str]:
    root = attempts.run_dir(run_id) / "checkpoints"
    return sorted(folder.name for folder in root.iterdir()) if root.exists() else []


def test_a_superseded_driver_stops_before_its_next_checkpoint_and_writes_nothing_more(platform, settings, monkeypatch):
    settings.ROLLYARD_HEARTBEAT_TIMEOUT_S = 600
    # Checkpoints after steps 2 and 4 (and 6, the last). The reconciler gives the attempt
    # up right after step 3 is stored, so step 4's checkpoint must never appear.
    spec = {**SMALL, "training": {"steps": 6, "eval_every": 0, "checkpoint_every": 2}, "dataset": {"eval_size": 4}}

    step_3_stored, given_up = threading.Event(), threading.Event()

    class PausingSink(sink_module.DatabaseSink):
        """The real sink, with one pause point: after it stored step 3's heartbeat, the
        driver waits until the test has given its attempt up (so the interleaving is the
        same on a fast machine and a slow one)."""

        def flush(self) -> None:
            holds_step_3 = any(event.kind == "heartbeat" and event.step == 3 for event in self._buffer)
            super().flush()
            if holds_step_3:
                step_3_stored.set()
                assert given_up.wait(60)

    monkeypatch.setattr(tasks, "DatabaseSink", PausingSink)
    run_id = launch(spec, platform)
    driver, result = drive_in_a_thread(run_id)

    assert step_3_stored.wait(120), result
    # From this thread's own connection, as the reconciler's sweep would.
    attempts.requeue_or_fail_lost_run(run_id, timezone.now() + timedelta(seconds=601))
    points_at_give_up = MetricPoint.objects.filter(run_id=run_id).count()
    events_at_give_up = RunEvent.objects.filter(run_id=run_id).count()
    assert checkpoint_folders(run_id) == ["step-000002"]
    given_up.set()
    driver.join(120)

    assert not driver.is_alive() and result == {"outcome": "superseded"}, result
    # Nothing written after the attempt was given up: no checkpoint folder (not even a
    # partial one), no checkpoint row, no point, no event, and no status of its own.
    assert checkpoint_folders(run_id) == ["step-000002"]
    assert list(Checkpoint.objects.filter(run_id=run_id).values_list("step", flat=True)) == [2]
    assert MetricPoint.objects.filter(run_id=run_id).count() == points_at_give_up
    assert MetricPoint.objects.filter(run_id=run_id).order_by("-step").first().step == 3
    assert RunEvent.objects.filter(run_id=run_id).count() == events_at_give_up
    run = Run.objects.get(pk=run_id)
    assert run.status == RunStatus.QUEUED and "requeued, resumes from the checkpoint of step 2" in run.status_reason
    assert RunAttempt.objects.get(run_id=run_id).outcome == "lost"


def test_a_driver_superseded_while_it_writes_a_checkpoint_never_publishes_it(platform, settings, monkeypatch):
    """The window the pre-checkpoint flush leaves open: the attempt is given up after the
    flush passed and while the checkpoint's files are being written. The rename into
    place runs under the run's row lock only while the attempt is current, so the
    written folder is thrown away instead of becoming the run's step-4 checkpoint."""
    settings.ROLLYARD_HEARTBEAT_TIMEOUT_S = 600
    spec = {**SMALL, "training": {"steps": 6, "eval_every": 0, "checkpoint_every": 2}, "dataset": {"eval_size": 4}}
    step_4_written, given_up = threading.Event(), threading.Event()
    write_checkpoint = SyncRecipe.write_checkpoint

    def write_then_wait(recipe, run_dir, step, metrics):
        partial = write_checkpoint(recipe, run_dir, step, metrics)
        if step == 4:
            step_4_written.set()
            assert given_up.wait(60)
        return partial

    monkeypatch.setattr(SyncRecipe, "write_checkpoint", write_then_wait)
    run_id = launch(spec, platform)
    driver, result = drive_in_a_thread(run_id)

    assert step_4_written.wait(120), result
    assert checkpoint_folders(run_id)[0].startswith(".partial-step-000004-")  # written, not published
    attempts.requeue_or_fail_lost_run(run_id, timezone.now() + timedelta(seconds=601))
    given_up.set()
    driver.join(120)

    assert not driver.is_alive() and result == {"outcome": "superseded"}, result
    assert checkpoint_folders(run_id) == ["step-000002"]  # the written folder is gone too
    assert list(Checkpoint.objects.filter(run_id=run_id).values_list("step", flat=True)) == [2]
    assert "resumes from the checkpoint of step 2" in Run.objects.get(pk=run_id).status_reason


def test_a_step_longer_than_the_heartbeat_timeout_is_not_taken_for_a_dead_worker(platform, settings, monkeypatch):
    settings.ROLLYARD_HEARTBEAT_TIMEOUT_S = 1.0  # the driver beats every 0.2 s
    # Evaluations before step 1 and after step 2 made to last 1.5 s, as a long one on a
    # GPU would: the built-in model evaluates too fast on a quiet machine for the premise
    # below to hold by itself (even 512 prompts sometimes took under a second).
    evaluate = SyncRecipe.evaluate

    def slow_evaluate(recipe, step):
        events = evaluate(recipe, step)
        time.sleep(1.5)
        return events

    monkeypatch.setattr(SyncRecipe, "evaluate", slow_evaluate)
    spec = {**SMALL, "training": {"steps": 2, "eval_every": 0, "checkpoint_every": 0}, "dataset": {"eval_size": 8}}
    run_id = launch(spec, platform)
    driver, result = drive_in_a_thread(run_id)

    sweeps = 0
    requeued: list[int] = []
    while driver.is_alive():
        report = reconcile_runs()  # the reconciler, sweeping ten times a second
        requeued += report.requeued + report.failed
        sweeps += 1
        time.sleep(0.1)

    assert result == {"outcome": RunStatus.SUCCEEDED}, result
    assert requeued == [] and sweeps > 10
    # The premise: the run did go longer than the timeout without an engine heartbeat
    # (the engine's own heartbeat closes each step and the evaluation before step 1).
    beats = sorted(RunEvent.objects.filter(run_id=run_id, kind="heartbeat").values_list("wall_time", flat=True))
    started = RunAttempt.objects.get(run_id=run_id).started_at.timestamp()
    gaps = [later - earlier for earlier, later in zip([started, *beats], beats)]
    assert max(gaps) > settings.ROLLYARD_HEARTBEAT_TIMEOUT_S, gaps
    assert RunAttempt.objects.get(run_id=run_id).outcome == "succeeded"
