"""Celery tasks of admission. Registered through workers.celery_app's autodiscovery."""

from quotas.admission import admit_queued_runs, cluster_free_gpus
from workers.celery_app import app
from workers.names import ADMIT_RUNS


@app.task(name=ADMIT_RUNS)
def admit_runs(pool_id: int | None = None) -> list[int]:
    """Sweep one pool's queue (every pool's when None) and admit what fits; returns the
    admitted runs' ids. Sent after a launch, a release and a quota change, and on a
    timer. Here, in the worker, admission may read Ray's free GPUs; the web tier never
    does."""
    return admit_queued_runs(pool_id, cluster_free_gpus=cluster_free_gpus())
