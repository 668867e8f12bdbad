"""The live websockets of the runs: one run's page, /ws/runs/<id>/ (RunConsumer), and the
runs list, /ws/runs/ (RunListConsumer).

Authorised like the API (`accounts.ws_auth`: a session cookie with an allowed Origin, or a
token by header, `?token=` or a first {"type": "auth", "token": ...} message). Close
codes: 4401 not signed in or the token was revoked, 4403 no such run or not yours, 4429
too many failed token uses.

Server → client messages:
  {"type": "hello", "run": {...RunSerializer...}}
  {"type": "events", "events": [engine event as JSON, ...]}      one stored batch
  {"type": "status", "status": ..., "reason": ..., "cancel_requested": bool,
   "started_at": iso|null, "finished_at": iso|null}
  {"type": "alerts", "alerts": [{"id", "kind", "rule", "message", "opened_at",
   "resolved_at"}, ...]}                                         opened or resolved (runs.alerts)
Control (cancel) goes through the REST API; the socket only listens. Published messages
arrive encoded already (`runs.live.encoded`): a socket forwards their text untouched.

The runs list, /ws/runs/ (same authorisation and close codes). The socket joins the
groups of the user's teams (every team for staff) and, once told which rows the page
shows, those rows' groups (`runs.live`); it never hears of another team's run.
Client → server:
  {"type": "watch", "runs": [run id, ...]}     the rows shown, at most MAX_WATCHED; each
                                               watch replaces the one before
Server → client:
  {"type": "hello", "teams": [team name, ...]}
  {"type": "rows", "rows": [runs.live.row, ...]}   the watched rows now (invisible ids left out)
  {"type": "row", "row": runs.live.row}            a watched run's status changed, or its
                                                   progress (at most every few seconds)
  {"type": "created", "run": {id, team, team_id, owner, name, algorithm, status, created_at}}
  {"type": "error", "error": text}                 a watch message the server cannot read
"""

from typing import Any

from channels.db import database_sync_to_async

from accounts.permissions import teams_of
from accounts.ws_auth import CLOSE_FORBIDDEN, AuthenticatedJsonWebsocketConsumer
from runs import live, selectors
from runs.api.serializers import RunSerializer
from runs.live import run_group
from runs.models import Run

MAX_WATCHED = 100  # rows one list socket may watch (a page shows 50)


class RunConsumer(AuthenticatedJsonWebsocketConsumer):
    group: str | None = None

    async def start(self, user: Any) -> None:
        run_id = int(self.scope["url_route"]["kwargs"]["run_id"])
        hello = await self._hello(user, run_id)
        if hello is None:
            await self.close(code=CLOSE_FORBIDDEN)
            return
        # Joined right after the snapshot: the page dedupes what it receives against the
        # history it loads over REST, so a batch stored in between is not lost for it.
        self.group = run_group(run_id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.send_json({"type": "hello", "run": hello})

    async def disconnect(self, code: int) -> None:
        await super().disconnect(code)
        if self.group is not None:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    @database_sync_to_async
    def _hello(self, user, run_id: int) -> dict | None:
        try:
            run = selectors.get_visible_run(user, run_id)
        except Run.DoesNotExist:
            return None
        return dict(RunSerializer(run).data)

    async def run_frame(self, message: dict[str, Any]) -> None:
        """A published message ("run.frame", `runs.live.encoded`): sent as encoded once
        by its publisher, the same text to every socket of the run."""
        await self.send(text_data=message["text"])


class RunListConsumer(AuthenticatedJsonWebsocketConsumer):
    """The runs list's socket: its rows' status and progress, and the runs launched in the
    user's teams (see the module)."""

    team_groups: list[str] = []
    row_groups: list[str] = []

    async def start(self, user: Any) -> None:
        teams = await self._teams(user)
        self.team_groups = [live.team_runs_group(team_id) for team_id, _ in teams]
        for group in self.team_groups:
            await self.channel_layer.group_add(group, self.channel_name)
        await self.send_json({"type": "hello", "teams": [name for _, name in teams]})

    async def receive_message(self, content: Any) -> None:
        if not isinstance(content, dict) or content.get("type") != "watch":
            await self.send_json({"type": "error", "error": 'expected {"type": "watch", "runs": [run id, ...]}'})
            return
        run_ids = content.get("runs")
        if not isinstance(run_ids, list) or not all(type(run_id) is int for run_id in run_ids):
            await self.send_json({"type": "error", "error": "watch: runs must be a list of run ids (whole numbers)"})
            return
        if len(run_ids) > MAX_WATCHED:
            await self.send_json({"type": "error", "error": f"watch: at most {MAX_WATCHED} runs, not {len(run_ids)}"})
            return
        await self._leave(self.row_groups)
        # Only runs the user may see; ids of others are left out like missing ones. The
        # groups are joined before the rows are read, so no change falls in between (one
        # published just before the read may arrive after it, and the next one corrects it).
        visible = await self._visible_ids(run_ids)
        self.row_groups = [live.run_row_group(run_id) for run_id in visible]
        for group in self.row_groups:
            await self.channel_layer.group_add(group, self.channel_name)
        await self.send_json({"type": "rows", "rows": await self._rows(visible)})

    async def disconnect(self, code: int) -> None:
        await super().disconnect(code)
        await self._leave(self.team_groups + self.row_groups)

    async def _leave(self, groups: list[str]) -> None:
        for group in groups:
            await self.channel_layer.group_discard(group, self.channel_name)

    @database_sync_to_async
    def _teams(self, user: Any) -> list[tuple[int, str]]:
        return list(teams_of(user).order_by("name").values_list("pk", "name"))

    @database_sync_to_async
    def _visible_ids(self, run_ids: list[int]) -> list[int]:
        return list(selectors.visible_runs(self.user).filter(pk__in=run_ids).values_list("pk", flat=True))

    @database_sync_to_async
    def _rows(self, run_ids: list[int]) -> list[dict]:
        runs = Run.objects.filter(pk__in=run_ids).only("status", "cancel_requested", "current_step", "total_steps", "summary")
        return [live.row(run) for run in runs.order_by("-pk")]

    async def run_frame(self, message: dict[str, Any]) -> None:
        """A published row or launch (`runs.live.encoded`), forwarded as it came."""
        await self.send(text_data=message["text"])
