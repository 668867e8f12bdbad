"""The quota page's websocket: /ws/quotas/.

Authorised like every socket (`accounts.ws_auth`); anyone signed in may open it and hears
only what `quotas.live.quota_board` shows them. Server → client:
  {"type": "quotas", "at": iso, "all_teams": bool, "pools": [...], "quotas": [...]}
on connect, then again after each change (a run started, finished or was requeued), at
most one every THROTTLE_S: changes arriving meanwhile are folded into the next snapshot.
"""

import asyncio
from typing import Any

from channels.db import database_sync_to_async

from accounts.ws_auth import AuthenticatedJsonWebsocketConsumer
from quotas.live import QUOTAS_GROUP, quota_board

THROTTLE_S = 0.5


class QuotaConsumer(AuthenticatedJsonWebsocketConsumer):
    joined = False
    _dirty = False
    _pending: asyncio.Task | None = None

    async def start(self, user: Any) -> None:
        await self.channel_layer.group_add(QUOTAS_GROUP, self.channel_name)
        self.joined = True
        await self._send_board()

    async def disconnect(self, code: int) -> None:
        await super().disconnect(code)
        if self._pending is not None:
            self._pending.cancel()
        if self.joined:
            await self.channel_layer.group_discard(QUOTAS_GROUP, self.channel_name)

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
        await self.send_json({"type": "quotas", **await database_sync_to_async(quota_board)(self.user)})
