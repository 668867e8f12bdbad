"""The reconciler against a real dead worker: Celery worker processes (real Redis broker,
the test database) drive a real run that checkpoints every few steps; the worker is
SIGKILLed mid-run (its whole process group, as if the machine died); the reconciler's
task, called here with a short heartbeat timeout, requeues the run with a reason; a new
worker admits it, resumes from the last checkpoint and finishes it. With no attempts
left, the same loss fails the run instead."""

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model

from devstack.processes import start_worker, stop
from devstack.services import redis_url, separate_redis_database
from runs import launch
from runs.models import Checkpoint, MetricPoint, Run, RunAttempt, RunEvent
from rollyard import dispatch
from rollyard.celery import app
from rollyard.task_names import ADMIT_RUNS, EXECUTE_RUN, RUNS_QUEUE
from workers.tasks import reconcile_runs

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(900)]

# Small, so that it stays quick on a loaded 2-core machine: a step is a few rollouts.
STEPS, CHECKPOINT_EVERY = 10, 3
# The reconciler's timeout in these tests (the test process's setting): short, so a dead
# worker is noticed seconds after the kill.
HEARTBEAT_TIMEOUT_S = 2
SPEC = {
    "training": {"steps": STEPS, "eval_every": 0, "checkpoint_every": CHECKPOINT_EVERY},
    "rollout": {"prompts_per_step": 2, "n": 2, "max_new_tokens": 32},
    "dataset": {"eval_size": 8},
    # In the worker's own process: SIGKILL of its group takes the trainer with it.
    "resources": {"executor": "inprocess"},
}


@pytest.fixture
def start_killable_worker(stack_process_env, settings, tmp_path, monkeypatch) -> Callable[[str], object]:
    """Starts Celery workers (runs and housekeeping queues) on a broker of their own,
    writing run folders under tmp_path; this process's hand-offs (launch, reconciler) go
    to that broker too. Stops whatever is left at the end."""
    runs_dir = tmp_path / "runs"
    settings.ROLLYARD_RUNS_DIR = runs_dir
    # Another database of the session's Redis: the session's live stack (started by other
    # tests) has a worker on its broker that would otherwise take our run, and we would
    # kill a worker that never had it.
    broker = separate_redis_database(redis_url())
    env = {**stack_process_env, "ROLLYARD_RUNS_DIR": str(runs_dir), "REDIS_URL": broker}
    with app.connection_for_write(broker) as connection:  # messages an earlier session left
        for queue in (RUNS_QUEUE, "celery"):
            connection.default_channel.queue_purge(queue)

    def send(task: str, args: list, **options) -> None:
        with app.connection_for_write(broker) as connection:
            app.send_task(task, args=args, connection=connection, **options)

    monkeypatch.setattr(dispatch, "enqueue_run", lambda run_id: send(EXECUTE_RUN, [run_id], queue=RUNS_QUEUE))
    monkeypatch.setattr(dispatch, "request_admission", lambda pool_id=None: send(ADMIT_RUNS, [pool_id]))
    started = []

    def start(name: str):
        worker = start_worker(env, tmp_path / f"{name}.log")
        worker.log = tmp_path / f"{name}.log"
        started.append(worker)
        return worker

    yield start
    stop(*started)


def logs(*workers) -> str:
    return "\n".join(f"--- {w.log.name}\n{Path(w.log).read_text(errors='replace')[-4000:]}" for w in workers)


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str, *workers) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    pytest.fail(f"{what} not within {timeout_s} s\n{logs(*workers)}")


def kill_after_a_checkpoint(run_id: int, worker) -> int:
    """Wait until the run checkpointed and trained past it, then SIGKILL the worker's
    whole process group. Returns the step of the run's last recorded checkpoint."""

    def past_a_checkpoint() -> bool:
        run = Run.objects.get(pk=run_id)
        if run.is_terminal:
            pytest.fail(f"the run ended before the kill: {run.status}: {run.status_reason}\n{logs(worker)}")
        latest = Checkpoint.objects.filter(run_id=run_id).order_by("-step").first()
        return latest is not None and run.current_step > latest.step

    wait_for(past_a_checkpoint, 300, "a step after a checkpoint", worker)
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait(timeout=30)
    assert Run.objects.get(pk=run_id).status == "running"
    return Checkpoint.objects.filter(run_id=run_id).order_by("-step").first().step


def launch_kill_and_reconcile(user, start_worker) -> tuple[int, int, int, dict]:
    """Launch a run, SIGKILL its worker after a checkpoint, wait until its last heartbeat
    is older than HEARTBEAT_TIMEOUT_S, and run the reconciler's task. Returns the run's id, the
    step of its last checkpoint, the step it had reached, and the reconciler's report."""
    run_id = launch.create_run(user, SPEC).pk
    checkpoint_step = kill_after_a_checkpoint(run_id, start_worker("worker-1"))
    run = Run.objects.get(pk=run_id)
    time.sleep(max(0.0, run.last_heartbeat_at.timestamp() + HEARTBEAT_TIMEOUT_S + 0.5 - time.time()))
    return run_id, checkpoint_step, run.current_step, reconcile_runs()


@pytest.fixture
def alice(db):
    return get_user_model().objects.create_user("alice", password="pw")


def test_a_run_whose_worker_is_killed_is_requeued_and_resumes_from_its_last_checkpoint(
    alice, start_killable_worker, settings
):
    settings.ROLLYARD_HEARTBEAT_TIMEOUT_S = HEARTBEAT_TIMEOUT_S
    settings.ROLLYARD_MAX_ATTEMPTS = 3

    run_id, checkpoint_step, killed_at_step, report = launch_kill_and_reconcile(alice, start_killable_worker)

    assert report["requeued"] == [run_id]
    requeued = Run.objects.get(pk=run_id)
    assert requeued.status == "queued"
    assert "no heartbeat" in requeued.status_reason and "attempt 1 of 3" in requeued.status_reason
    assert f"resumes from the checkpoint of step {checkpoint_step}" in requeued.status_reason

    second_worker = start_killable_worker("worker-2")
    wait_for(lambda: Run.objects.get(pk=run_id).is_terminal, 400, "the resumed run's end", second_worker)

    run = Run.objects.get(pk=run_id)
    assert run.status == "succeeded", f"{run.status}: {run.status_reason}\n{logs(second_worker)}"
    first, second = RunAttempt.objects.filter(run=run).order_by("number")
    assert (first.outcome, second.outcome) == ("lost", "succeeded")
    assert first.reason == requeued.status_reason
    assert second.resumed_from_step == checkpoint_step
    assert second.worker_pid != first.worker_pid
    assert RunEvent.objects.filter(run=run, kind="log", payload__message__startswith=f"resumed at step {checkpoint_step} ").exists()
    # The second attempt's first step is the one after the checkpoint, not step 1; the steps
    # the killed worker reported after its checkpoint (usually some: the kill waits for a
    # step past one, but the worker may write the next checkpoint just before it dies)
    # were replaced, not doubled.
    resumed_steps = MetricPoint.objects.filter(
        run=run, name="reward/mean", wall_time__gte=second.started_at.timestamp()
    ).values_list("step", flat=True)
    assert min(resumed_steps) == checkpoint_step + 1
    assert killed_at_step >= checkpoint_step
    every_step = sorted(MetricPoint.objects.filter(run=run, name="reward/mean").values_list("step", flat=True))
    assert every_step == list(range(1, STEPS + 1))
    assert run.current_step == STEPS


def test_a_run_out_of_attempts_is_failed_when_its_worker_dies(alice, start_killable_worker, settings):
    settings.ROLLYARD_HEARTBEAT_TIMEOUT_S = HEARTBEAT_TIMEOUT_S
    settings.ROLLYARD_MAX_ATTEMPTS = 1

    run_id, _, _, report = launch_kill_and_reconcile(alice, start_killable_worker)

    assert report["failed"] == [run_id]
    run = Run.objects.get(pk=run_id)
    assert run.status == "failed"
    assert "no heartbeat" in run.status_reason and "attempt 1 of 1; no attempts left" in run.status_reason
    assert RunAttempt.objects.get(run=run).outcome == "lost"
