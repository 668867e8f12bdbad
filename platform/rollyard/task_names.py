"""Celery task names and queues, in one place so senders never import task modules."""

EXECUTE_RUN = "rollyard.execute_run"
# Periodic housekeeping (Celery beat, settings.CELERY_BEAT_SCHEDULE), on the default queue.
RECONCILE_RUNS = "rollyard.reconcile_runs"
APPLY_CHECKPOINT_RETENTION = "rollyard.apply_checkpoint_retention"
# An admission sweep of one pool or all (workers.tasks); on the default queue.
ADMIT_RUNS = "rollyard.admit_runs"

# Runs hold a worker slot for their whole life; they get a queue of their own so short
# housekeeping tasks never wait behind them.
RUNS_QUEUE = "runs"
