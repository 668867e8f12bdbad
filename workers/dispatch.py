"""How the platform hands work to the workers: by task name, never by importing tasks."""

from workers.celery_app import app
from workers.names import ADMIT_RUNS, EXECUTE_RUN, RUNS_QUEUE


def enqueue_run(run_id: int) -> None:
    """Queue the driver of one run. Call it from transaction.on_commit only."""
    app.send_task(EXECUTE_RUN, args=[run_id], queue=RUNS_QUEUE)


def request_admission(pool_id: int | None = None) -> None:
    """Queue an admission sweep of one pool (every pool when None). Call it from
    transaction.on_commit only."""
    app.send_task(ADMIT_RUNS, args=[pool_id])
