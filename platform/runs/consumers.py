"""The live websocket of one run: /ws/runs/<id>/.

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
"""

from typing import Any

from channels.db import database_sync_to_async

from accounts.ws_auth import CLOSE_FORBIDDEN, AuthenticatedJsonWebsocketConsumer
from runs import selectors
from runs.api.serializers import RunSerializer
from runs.live import run_group
from runs.models import Run


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
