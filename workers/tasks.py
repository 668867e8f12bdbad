"""Celery tasks. Each takes ids, re-reads state from the database and is safe to run twice."""

import logging
import socket

from workers.celery_app import app
from workers.names import EXECUTE_RUN
from workers.sink import DatabaseSink

logger = logging.getLogger(__name__)


@app.task(name=EXECUTE_RUN)
def execute_run(run_id: int) -> str:
    """Drive one run: claim it, run the engine (locally on Ray or in-process), record its
    end. Cancellation arrives through the database, polled by the engine between steps."""
    # The engine pulls in torch; keep it out of the web tier and of Celery's start-up.
    from engine.orchestration import describe, run as run_engine
    from engine.spec import parse_spec
    from runs.models import Run, RunStatus
    from runs.selectors import cancel_requested
    from runs.services import IllegalTransition, transition

    try:
        run = Run.objects.get(pk=run_id)
    except Run.DoesNotExist:
        logger.warning("run %s no longer exists; nothing to do", run_id)
        return "missing"
    try:
        # A redelivered message, or a run cancelled while it queued, stops here.
        if run.status == RunStatus.QUEUED:
            transition(run_id, RunStatus.ADMITTED, "admitted: no quota applies")
        transition(run_id, RunStatus.RUNNING, f"picked up by worker {socket.gethostname()}")
    except IllegalTransition as exc:
        logger.info("run %s not started: %s", run_id, exc)
        return "skipped"

    sink = DatabaseSink(run_id)
    try:
        outcome = run_engine(parse_spec(run.spec), sink, should_stop=lambda: cancel_requested(run_id))
    except Exception as exc:
        logger.exception("run %s failed", run_id)
        sink.flush()
        transition(run_id, RunStatus.FAILED, describe(exc))
        return RunStatus.FAILED
    sink.flush()
    reason = "cancelled on request" if outcome == RunStatus.CANCELLED else "all steps done"
    transition(run_id, outcome, reason)
    return outcome
