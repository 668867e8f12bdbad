"""The live websocket of one run: /ws/runs/<id>/.

Authorised like the API (session cookie or ?token=). The socket is accepted before it is
closed with an application code, because a browser only sees a close code on an
accepted socket: 4401 = not signed in, 4403 = no such run or not yours.

Server → client messages:
  {"type": "hello", "run": {...RunSerializer...}}
  {"type": "events", "events": [engine event as JSON, ...]}      one stored batch
  {"type": "status", "status": ..., "reason": ..., "cancel_requested": bool,
   "started_at": iso|null, "finished_at": iso|null}
"""

from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from runs import selectors
from runs.api.serializers import RunSerializer
from runs.live import run_group
from runs.models import Run

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403


class RunConsumer(AsyncJsonWebsocketConsumer):
    group: str | None = None

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.accept()
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        run_id = int(self.scope["url_route"]["kwargs"]["run_id"])
        hello = await self._hello(user, run_id)
        if hello is None:
            await self.accept()
            await self.close(code=CLOSE_FORBIDDEN)
            return
        # Join before reading nothing else: anything stored after the hello's snapshot
        # reaches this socket. The page dedupes against the history it loads over REST.
        self.group = run_group(run_id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await self.send_json({"type": "hello", "run": hello})

    async def disconnect(self, code: int) -> None:
        if self.group is not None:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        # Control (cancel) goes through the REST API; the socket only listens.
        pass

    @database_sync_to_async
    def _hello(self, user, run_id: int) -> dict | None:
        try:
            run = selectors.get_visible_run(user, run_id)
        except Run.DoesNotExist:
            return None
        return dict(RunSerializer(run).data)

    # Channel-layer handlers: "run.events" → run_events, "run.status" → run_status.

    async def run_events(self, message: dict[str, Any]) -> None:
        await self.send_json({"type": "events", "events": message["events"]})

    async def run_status(self, message: dict[str, Any]) -> None:
        await self.send_json({"type": "status", **{k: v for k, v in message.items() if k != "type"}})
