"""Celery task names and queues, in one place so senders never import task modules."""

EXECUTE_RUN = "rollyard.execute_run"

# Runs hold a worker slot for their whole life; they get a queue of their own so short
# housekeeping tasks never wait behind them.
RUNS_QUEUE = "runs"
