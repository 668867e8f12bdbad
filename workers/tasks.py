"""Celery tasks. Each takes ids, re-reads state from the database and is safe to run twice."""

import logging
import os
import socket

from workers.celery_app import app
from workers.names import APPLY_CHECKPOINT_RETENTION, EXECUTE_RUN, RECONCILE_RUNS
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
    from runs.services import (
        IllegalTransition,
        attempt_is_current,
        claim_run,
        end_attempt,
        set_aside_stale_run_dir,
    )

    try:
        run = Run.objects.get(pk=run_id)
    except Run.DoesNotExist:
        logger.warning("run %s no longer exists; nothing to do", run_id)
        return "missing"
    try:
        # Only an admitted run starts (quotas.admission admits): a queued run, a redelivered
        # message, or a run cancelled while it waited stops here.
        claim = claim_run(run_id, socket.gethostname(), os.getpid())
    except IllegalTransition as exc:
        logger.info("run %s not started: %s", run_id, exc)
        return "skipped"

    if aside := set_aside_stale_run_dir(claim):
        logger.warning("run %s: a folder from an earlier run with this id was moved to %s", run_id, aside)
    attempt_id = claim.attempt.pk
    sink = DatabaseSink(run_id)

    def should_stop() -> bool:
        # Also once the reconciler gave this attempt up (a stall it took for a dead worker):
        # the run may be another worker's by now.
        return cancel_requested(run_id) or not attempt_is_current(attempt_id)

    try:
        outcome = run_engine(
            parse_spec(run.spec), sink, should_stop=should_stop, run_dir=claim.run_dir, resume_from=claim.resume_from
        )
        reason = "cancelled on request" if outcome == RunStatus.CANCELLED else "all steps done"
    except Exception as exc:
        logger.exception("run %s failed", run_id)
        outcome, reason = RunStatus.FAILED, describe(exc)
    sink.flush()
    if end_attempt(attempt_id, outcome, reason) is None:
        logger.warning("run %s: attempt %s was given up by the reconciler; leaving the run as it is",
                       run_id, claim.attempt.number)
        return "superseded"
    return outcome


@app.task(name=RECONCILE_RUNS)
def reconcile_runs() -> dict:
    """The periodic sweep (runs.reconciler): lost workers, lost messages, alerts."""
    from dataclasses import asdict

    from runs.reconciler import reconcile_runs as sweep

    return asdict(sweep())


@app.task(name=APPLY_CHECKPOINT_RETENTION)
def apply_checkpoint_retention() -> dict[str, list[int]]:
    """Every run's checkpoint retention policy (runs.retention); returns steps deleted."""
    from runs.retention import apply_retention_everywhere

    return {str(run_id): steps for run_id, steps in apply_retention_everywhere().items()}
