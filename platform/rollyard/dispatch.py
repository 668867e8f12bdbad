"""How the platform hands work to the workers: by task name, never by importing tasks.

Below every app (it imports only the Celery app and the task names), so that quotas
(a quota edit frees room) and runs (a launch, a release, a requeue) schedule the same
sweep the same way."""

from django.db import transaction

from rollyard.celery import app
from rollyard.task_names import ADMIT_RUNS, EXECUTE_RUN, RUNS_QUEUE


def enqueue_run(run_id: int) -> None:
    """Queue the driver of one run. Call it from transaction.on_commit only."""
    app.send_task(EXECUTE_RUN, args=[run_id], queue=RUNS_QUEUE)


def request_admission(pool_id: int | None = None) -> None:
    """Queue an admission sweep of one pool (every pool when None). Call it from
    transaction.on_commit only."""
    app.send_task(ADMIT_RUNS, args=[pool_id])


def sweep_on_commit(pool_id: int | None = None) -> None:
    """Sweep the pool (every pool when None) once the caller's transaction commits.
    robust: the change is committed either way; with the broker down the periodic sweep
    admits the pool's runs later instead of the caller failing."""
    transaction.on_commit(lambda: request_admission(pool_id), robust=True)
