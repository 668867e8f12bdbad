"""How the platform hands work to the workers: by task name, never by importing tasks."""

from workers.celery_app import app
from workers.names import EXECUTE_RUN, RUNS_QUEUE


def enqueue_run(run_id: int) -> None:
    """Queue the driver of one run. Call it from transaction.on_commit only."""
    app.send_task(EXECUTE_RUN, args=[run_id], queue=RUNS_QUEUE)
