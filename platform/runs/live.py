"""Names and messages of the live channel-layer groups (one per run).

A message is encoded for the browser once, here, by its publisher: the channel layer
carries the frame's text ({"type": "run.frame", "text": ...}) and each of the run's N
sockets sends it as is (`runs.consumers`), instead of every socket encoding it again."""

import json
from typing import Any

from accounts.live import send_to_group

RUN_FRAME = "run.frame"  # the consumers' handler: run_frame


def run_group(run_id: int) -> str:
    """The channel-layer group every websocket watching the run joins."""
    return f"run-{run_id}"


def encoded(message: dict[str, Any]) -> dict[str, Any]:
    """The channel-layer message carrying `message` as its sockets' frame: "run.events"
    becomes {"type": "events", ...}, "run.status" {"type": "status", ...} and
    "run.alerts" {"type": "alerts", ...}."""
    return {"type": RUN_FRAME, "text": json.dumps({**message, "type": message["type"].removeprefix("run.")})}


def publish(run_id: int, message: dict[str, Any]) -> None:
    """Send `message` ("run.events", "run.status" or "run.alerts") to the run's watchers,
    encoded once.

    Call it from transaction.on_commit only, so nobody sees what the database may yet
    roll back. Synchronous callers only (services, workers).
    """
    send_to_group(run_group(run_id), encoded(message))
