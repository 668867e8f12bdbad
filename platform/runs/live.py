"""Names and messages of the live channel-layer groups (one per run)."""

from typing import Any

from accounts.live import send_to_group


def run_group(run_id: int) -> str:
    """The channel-layer group every websocket watching the run joins."""
    return f"run-{run_id}"


def publish(run_id: int, message: dict[str, Any]) -> None:
    """Send `message` (its "type" names the consumer handler) to the run's watchers.

    Call it from transaction.on_commit only, so nobody sees what the database may yet
    roll back. Synchronous callers only (services, workers).
    """
    send_to_group(run_group(run_id), message)
