"""Celery tasks. Each takes ids, re-reads state from the database and is safe to run twice."""

import logging
import os
import socket
import sys

from rollyard.celery import app
from rollyard.task_names import ADMIT_RUNS, APPLY_CHECKPOINT_RETENTION, EXECUTE_RUN, RECONCILE_RUNS
from workers.attempt import AttemptFence, AttemptHeartbeat
from workers.sink import DatabaseSink

logger = logging.getLogger(__name__)


@app.task(name=EXECUTE_RUN)
def execute_run(run_id: int) -> str:
    """Drive one run: claim it, run the engine (locally on Ray or in-process), record its
    end. Cancellation arrives through the database, polled by the engine between steps.

    The attempt is fenced (workers.attempt): a heartbeat thread keeps it current while
    steps run, and once the reconciler gives it up every write is refused and the engine
    stops without a checkpoint; the run is then left to whoever owns it now."""
    # The engine pulls in torch; keep it out of the web tier and of Celery's start-up.
    from django.conf import settings

    from engine.events import Superseded
    from engine.orchestration import describe, run as run_engine
    from engine.spec import parse_spec
    from runs.models import Run, RunStatus
    from runs.selectors import cancel_requested
    from runs.attempts import claim_run, end_attempt, give_up_attempt, set_aside_stale_run_dir
    from runs.lifecycle import IllegalTransition

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
    # Writes wait out a database outage as long as the reconciler waits for a heartbeat.
    fence = AttemptFence(run_id, claim.attempt.pk, outage_s=settings.ROLLYARD_HEARTBEAT_TIMEOUT_S)
    sink = DatabaseSink(fence)
    heartbeat = AttemptHeartbeat(fence, every_s=settings.ROLLYARD_HEARTBEAT_EVERY_S)

    def should_stop() -> bool:
        fence.check()  # given up by the reconciler: raises Superseded, the engine stops dead
        return fence.call(cancel_requested, run_id)

    heartbeat.start()
    try:
        outcome = run_engine(
            parse_spec(run.spec), sink, should_stop=should_stop, run_dir=claim.run_dir, resume_from=claim.resume_from
        )
        reason = "cancelled on request" if outcome == RunStatus.CANCELLED else "all steps done"
    except Superseded:
        logger.warning("run %s: attempt %s stopped, superseded: %s", run_id, claim.attempt.number, fence.reason)
        return "superseded"
    except Exception as exc:
        if trainer_lost(exc):
            # The worker is fine, the trainer's process died (killed, out of memory): the
            # run goes on from its last checkpoint as for a lost worker, on this worker or
            # another. Ray's message runs over several lines; the first one says it.
            cause = f"trainer lost: {describe(exc).splitlines()[0]}"
            ended = fence.call(give_up_attempt, claim.attempt.pk, cause)
            logger.warning("run %s: %s", run_id, ended.status_reason if ended else "trainer lost, attempt superseded")
            return "trainer lost"
        logger.exception("run %s failed", run_id)
        outcome, reason = RunStatus.FAILED, describe(exc)
    finally:
        heartbeat.stop()
    try:
        sink.flush()
        ended = fence.call(end_attempt, claim.attempt.pk, outcome, reason)
    except Superseded:
        ended = None
    if ended is None:
        logger.warning("run %s: attempt %s was given up by the reconciler; leaving the run as it is",
                       run_id, claim.attempt.number)
        return "superseded"
    return outcome


def trainer_lost(exc: BaseException) -> bool:
    """Did the run fail because its trainer's Ray actor died, not because of the run?"""
    if "ray" not in sys.modules:
        return False
    from ray.exceptions import RayActorError

    return isinstance(exc, RayActorError)


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


@app.task(name=ADMIT_RUNS)
def admit_runs(pool_id: int | None = None) -> list[int]:
    """Sweep one pool's queue (every pool's when None) and admit what fits; returns the
    admitted runs' ids. Sent after a launch, a release and a quota change, and on a
    timer. Here, in the worker, admission may read Ray's free GPUs; the web tier never
    does.

    Then tell the queue and quota pages if why runs wait changed with no event to say so
    (a team's GPU-hours ran out while its runs ran, or came back as the period rolled
    on): once, and not at all when nothing changed (quotas.live)."""
    from quotas.live import publish_if_decisions_changed
    from runs.admission import admit_queued_runs
    from workers.capacity import cluster_free_gpus

    admitted = admit_queued_runs(pool_id, cluster_free_gpus=cluster_free_gpus())
    publish_if_decisions_changed()
    return admitted
