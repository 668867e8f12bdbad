"""The live pages' websockets: the queue page's /ws/queue/ (`?pool=` as the page's) and
the quota page's /ws/quotas/.

Authorised like every socket (`accounts.ws_auth`); anyone signed in may open them and
hears only what the page shows them (`quotas.live`). Server → client:
  {"type": "queue", ...quotas.live.queue_board}    on /ws/queue/
  {"type": "quotas", ...quotas.live.quota_board}   on /ws/quotas/
on connect (a reconnect starts with a fresh snapshot), then again after each change
(`quotas.live.publish_change`), at most one every THROTTLE_S: changes arriving meanwhile
are folded into the next snapshot.
"""

import asyncio
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async

from accounts.ws_auth import AuthenticatedJsonWebsocketConsumer
from quotas.live import LIVE_GROUP, queue_board, quota_board

THROTTLE_S = 0.5


class BoardConsumer(AuthenticatedJsonWebsocketConsumer):
    """A page's snapshot, sent on connect and, throttled, after each change heard on
    LIVE_GROUP. Subclasses name the message and read the snapshot (`board`)."""

    message_type = ""
    joined = False
    _dirty = False
    _pending: asyncio.Task | None = None

    def board(self, user: Any) -> dict[str, Any]:
        raise NotImplementedError

    async def start(self, user: Any) -> None:
        await self.channel_layer.group_add(LIVE_GROUP, self.channel_name)
        self.joined = True
        await self._send_board()

    async def disconnect(self, code: int) -> None:
        await super().disconnect(code)
        if self._pending is not None:
            self._pending.cancel()
        if self.joined:
            await self.channel_layer.group_discard(LIVE_GROUP, self.channel_name)

    async def quotas_changed(self, message: dict[str, Any]) -> None:
        self._dirty = True
        if self._pending is None or self._pending.done():
            self._pending = asyncio.ensure_future(self._flush())

    async def _flush(self) -> None:
        # A change heard while a snapshot is read sends one more after it.
        while self._dirty:
            await asyncio.sleep(THROTTLE_S)
            self._dirty = False
            await self._send_board()

    async def _send_board(self) -> None:
        await self.send_json({"type": self.message_type, **await database_sync_to_async(self.board)(self.user)})


class QuotaConsumer(BoardConsumer):
    message_type = "quotas"

    def board(self, user: Any) -> dict[str, Any]:
        return quota_board(user)


class QueueConsumer(BoardConsumer):
    message_type = "queue"

    def board(self, user: Any) -> dict[str, Any]:
        pools = parse_qs(self.scope.get("query_string", b"").decode("latin1")).get("pool")
        return queue_board(user, pools[0] if pools else None)
