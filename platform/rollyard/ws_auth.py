"""Websocket authentication and origin checks, matching the REST API's rules."""

from typing import Any
from urllib.parse import parse_qs

from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from channels.middleware import BaseMiddleware
from channels.security.websocket import OriginValidator
from django.conf import settings
from django.contrib.auth.models import AnonymousUser


@database_sync_to_async
def _user_for_token(secret: str):
    # The same lookup as the REST API's (accounts.auth): revoked, unknown or malformed
    # tokens leave the socket anonymous, which the consumer closes with 4401.
    from accounts.services import TokenRejected, authenticate_token

    try:
        return authenticate_token(secret).user
    except TokenRejected:
        return AnonymousUser()


class QueryTokenAuthMiddleware(BaseMiddleware):
    """`?token=<API token secret>` authenticates the socket (clients without a cookie).

    A token, when given, decides alone: a forged one leaves the socket anonymous even
    with a session cookie, as a bad token gets 401 from the API."""

    async def __call__(self, scope: dict[str, Any], receive, send):
        keys = parse_qs(scope.get("query_string", b"").decode("latin1")).get("token")
        if keys:
            scope = dict(scope, user=await _user_for_token(keys[0]))
        return await super().__call__(scope, receive, send)


def TokenOrSessionAuthMiddlewareStack(inner):  # noqa: N802 - named like Channels' stacks
    return AuthMiddlewareStack(QueryTokenAuthMiddleware(inner))


class BrowserOriginValidator(OriginValidator):
    """ALLOWED_HOSTS origin check that lets clients without an Origin header through.

    The check stops cross-site pages from using a visitor's session cookie; browsers
    always send Origin on websockets, so a missing one means a script or CLI client,
    which has no cookie of ours and must bring a token anyway."""

    def valid_origin(self, parsed_origin) -> bool:
        if parsed_origin is None:
            return True
        return super().valid_origin(parsed_origin)


def allowed_hosts_origin_validator(inner) -> BrowserOriginValidator:
    allowed = list(settings.ALLOWED_HOSTS)
    if settings.DEBUG and not allowed:
        allowed = ["localhost", "127.0.0.1", "[::1]"]
    return BrowserOriginValidator(inner, allowed)

