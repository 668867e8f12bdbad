"""Channel-layer groups of API tokens, and the one way the platform sends to a group.

Every websocket authenticated by a token joins its token's group, so revoking the token
closes those sockets at once (`accounts.ws_auth`), as its next API call answers 401."""

from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

TOKEN_REVOKED = "token.revoked"  # the consumers' handler: token_revoked


def token_group(token_id: int) -> str:
    return f"token-{token_id}"


def send_to_group(group: str, message: dict[str, Any]) -> None:
    """Send `message` (its "type" names the consumer handler) to a group's sockets.
    Synchronous callers only, from transaction.on_commit, so nobody hears of what the
    database may yet roll back."""
    layer = get_channel_layer()
    if layer is not None:
        async_to_sync(layer.group_send)(group, message)


def close_token_sockets(token_id: int) -> None:
    send_to_group(token_group(token_id), {"type": TOKEN_REVOKED})
