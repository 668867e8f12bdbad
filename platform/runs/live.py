"""Names and messages of the live channel-layer groups.

- `run_group(id)`: a run's page (/ws/runs/<id>/): every stored batch and status change.
- `run_row_group(id)`: the run's row on the runs list (/ws/runs/): status changes, and
  progress (step, the list's summary columns) at most once every PROGRESS_INTERVAL_S.
- `team_runs_group(id)`: a team's runs list sockets hear of each run launched in it.

A message is encoded for the browser once, here, by its publisher: the channel layer
carries the frame's text ({"type": "run.frame", "text": ...}) and each socket sends it as
is (`runs.consumers`), instead of every socket encoding it again."""

import json
import math
import time
from typing import Any

from accounts.live import send_to_group

RUN_FRAME = "run.frame"  # the consumers' handler: run_frame

# The summary columns of the runs list (frontend/templates/runs/list.html).
LIST_COLUMNS = ("reward/mean", "acc/mean")
# A run's row hears of its progress at most this often: a driver stores a batch every
# half second or so, and a list of 50 running runs would otherwise take 100 frames a second.
PROGRESS_INTERVAL_S = 3.0
# When each run's progress was last sent, by this process (a run's batches are stored by
# its one driver, so the throttle lives where they are). A finished run is forgotten.
_progress_sent_at: dict[int, float] = {}


def run_group(run_id: int) -> str:
    """The channel-layer group every websocket watching the run's page joins."""
    return f"run-{run_id}"


def run_row_group(run_id: int) -> str:
    """The group of the runs list sockets that show the run's row."""
    return f"run-{run_id}-row"


def team_runs_group(team_id: int) -> str:
    """The group of the runs list sockets of the team's members (and of staff)."""
    return f"team-{team_id}-runs"


def encoded(message: dict[str, Any]) -> dict[str, Any]:
    """The channel-layer message carrying `message` as its sockets' frame: "run.events"
    becomes {"type": "events", ...}, "run.status" {"type": "status", ...}, "run.alerts"
    {"type": "alerts", ...}, "run.row" {"type": "row", ...} and "run.created"
    {"type": "created", ...}."""
    return {"type": RUN_FRAME, "text": json.dumps({**message, "type": message["type"].removeprefix("run.")})}


def publish(run_id: int, message: dict[str, Any]) -> None:
    """Send `message` ("run.events", "run.status" or "run.alerts") to the run's watchers,
    encoded once.

    Call it from transaction.on_commit only, so nobody sees what the database may yet
    roll back. Synchronous callers only (services, workers).
    """
    send_to_group(run_group(run_id), encoded(message))


def row(run: Any) -> dict[str, Any]:
    """What the runs list shows of a Run that changes while it runs: status, progress and
    the summary columns (null: not reported yet)."""
    summary = run.summary if isinstance(run.summary, dict) else {}
    return {
        "id": run.pk,
        "status": run.status,
        "cancel_requested": run.cancel_requested,
        "current_step": run.current_step,
        "total_steps": run.total_steps,
        "summary": {name: _finite(summary.get(name)) for name in LIST_COLUMNS},
    }


def publish_row(run_row: dict[str, Any]) -> None:
    """Send a `row(run)` to the list sockets showing the run. From on_commit only."""
    send_to_group(run_row_group(run_row["id"]), encoded({"type": "run.row", "row": run_row}))


def progress_due(run_id: int) -> bool:
    """True (and the clock restarted) when the run's row has not heard of its progress for
    PROGRESS_INTERVAL_S; status changes are sent whatever this says."""
    now = time.monotonic()
    if now - _progress_sent_at.get(run_id, -math.inf) < PROGRESS_INTERVAL_S:
        return False
    _progress_sent_at[run_id] = now
    return True


def forget_progress(run_id: int) -> None:
    """A finished run sends no more progress: drop its throttle entry."""
    _progress_sent_at.pop(run_id, None)


def publish_created(run: Any) -> None:
    """Tell the team's list sockets a run was launched, with what their pages filter on
    (team, owner, name, algorithm, status), so a page counts it only when it would show
    it. From on_commit only."""
    spec = run.spec if isinstance(run.spec, dict) else {}
    message = {
        "type": "run.created",
        "run": {
            "id": run.pk,
            "team": run.team.name,
            "team_id": run.team_id,
            "owner": run.owner.get_username(),
            "name": run.name,
            "algorithm": (spec.get("algorithm") or {}).get("name"),
            "status": run.status,
            "created_at": run.created_at.isoformat(),
        },
    }
    send_to_group(team_runs_group(run.team_id), encoded(message))


def _finite(value: Any) -> float | None:
    # The summary stores non-finite values as null already (runs.telemetry); a list cell
    # must never receive a NaN the browser's JSON.parse rejects.
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None
