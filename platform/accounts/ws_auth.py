"""Who a websocket speaks for, by the REST API's rules, and the origin check that lets a
session cookie count.

- **Origin.** A handshake whose Origin is not allowed is refused (HTTP 403). Allowed is
  the socket's own origin (ws → http, wss → https, and the Host header, which must be in
  ALLOWED_HOSTS) or one of CSRF_TRUSTED_ORIGINS, scheme, host and port compared exactly,
  as Django's CSRF check does for forms.
- **Session cookie** counts only with an allowed Origin. Browsers always send one on
  websockets; a client without it is a script, whose cookie (stolen or not) is ignored:
  it must bring a token.
- **Token**, like the API's: `Authorization: Bearer <secret>` (or `Token`), `?token=`, or a
  first message `{"type": "auth", "token": "<secret>"}` within ROLLYARD_WS_AUTH_TIMEOUT_S
  (for clients that can set no header and keep secrets out of URLs and access logs).
  A token, when given, decides alone: a forged one is refused even with a valid cookie.
  Failed token uses count against the client's address with the API's
  (`accounts.ratelimit`); past the limit the socket is closed with 4429.
- A socket authenticated by a token joins its token's group: revoking the token closes
  it with 4401 (`accounts.live`).

Close codes, sent on an accepted socket because a browser sees no other: 4401 not
authenticated (or the token was revoked), 4403 no such object or not yours, 4429 too many
failed token uses.
"""

import asyncio
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.http.request import split_domain_port, validate_host

from accounts import ratelimit
from accounts.live import token_group
from accounts.models import ApiToken
from accounts.services import TokenRejected, authenticate_token

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_RATE_LIMITED = 4429

TOKEN_SCHEMES = ("token", "bearer")  # as accounts.auth
DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class SocketAuth:
    """What the handshake proved: a user (anonymous when nothing did), the token that
    authenticated it, or the close code of a refusal."""

    user: Any
    token_id: int | None = None
    refusal: int | None = None


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin1")
    return None


def _origin_tuple(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) with the scheme's default port filled in; None for anything
    that is not an http(s) origin ("null", garbage)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    return parts.scheme, parts.hostname, port or DEFAULT_PORTS[parts.scheme]


def _own_origin(scope: dict[str, Any]) -> tuple[str, str, int] | None:
    host = _header(scope, b"host")
    if not host:
        return None
    allowed = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed:
        allowed = [".localhost", "127.0.0.1", "[::1]"]  # Django's get_host() does the same
    domain, _ = split_domain_port(host)
    if not domain or not validate_host(domain, allowed):
        return None
    scheme = "https" if scope.get("scheme") == "wss" else "http"
    return _origin_tuple(f"{scheme}://{host}")


def origin_allowed(origin: str, scope: dict[str, Any]) -> bool:
    presented = _origin_tuple(origin)
    if presented is None:
        return False
    if presented == _own_origin(scope):
        return True
    return presented in {_origin_tuple(trusted) for trusted in settings.CSRF_TRUSTED_ORIGINS}


def presented_token(scope: dict[str, Any]) -> str | None:
    """The secret from `Authorization: Bearer|Token <secret>`, else from `?token=`. A
    header of another scheme is not ours, like the API's."""
    authorization = _header(scope, b"authorization")
    if authorization:
        scheme, _, secret = authorization.strip().partition(" ")
        if scheme.lower() in TOKEN_SCHEMES:
            return secret.strip()
    tokens = parse_qs(scope.get("query_string", b"").decode("latin1")).get("token")
    return tokens[0] if tokens else None


def client_address(scope: dict[str, Any]) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


@database_sync_to_async
def authenticate_secret(secret: str, address: str) -> SocketAuth:
    """The API's token check and failure count, for a socket."""
    try:
        ratelimit.check(ratelimit.TOKEN, address)
    except ratelimit.Refused:
        return SocketAuth(AnonymousUser(), refusal=CLOSE_RATE_LIMITED)
    try:
        token = authenticate_token(secret)
    except TokenRejected:
        ratelimit.record_failure(ratelimit.TOKEN, address)
        return SocketAuth(AnonymousUser(), refusal=CLOSE_UNAUTHENTICATED)
    return SocketAuth(token.user, token_id=token.pk)


class WebsocketAuthMiddleware:
    """Sets scope["socket_auth"] (and scope["user"]) from the handshake; see the module."""

    def __init__(self, inner):
        self.inner = inner
        self.with_session = AuthMiddlewareStack(_SessionUser(inner))

    async def __call__(self, scope: dict[str, Any], receive, send):
        origin = _header(scope, b"origin")
        if origin is not None and not origin_allowed(origin, scope):
            return await WebsocketDenier.as_asgi()(scope, receive, send)
        secret = presented_token(scope)
        if secret is not None:
            auth = await authenticate_secret(secret, client_address(scope))
        elif origin is not None:
            return await self.with_session(scope, receive, send)
        else:
            auth = SocketAuth(AnonymousUser())
        return await self.inner(dict(scope, user=auth.user, socket_auth=auth), receive, send)


class _SessionUser:
    """Inside Channels' session auth: the session's user becomes the socket's."""

    def __init__(self, inner):
        self.inner = inner

    async def __call__(self, scope: dict[str, Any], receive, send):
        # Channels' AuthMiddleware has resolved the lazy user already (no query here).
        return await self.inner(dict(scope, socket_auth=SocketAuth(scope["user"])), receive, send)


class AuthenticatedJsonWebsocketConsumer(AsyncJsonWebsocketConsumer):
    """Accepts, authenticates (from the handshake or a first auth message), then calls
    `start(user)` once. Until then nothing else is read; afterwards messages go to
    `receive_message`. Undecodable frames count as a message that is not auth."""

    user: Any = None
    _token_group: str | None = None
    _auth_timeout: asyncio.Task | None = None

    async def start(self, user: Any) -> None:
        raise NotImplementedError

    async def receive_message(self, content: Any) -> None:
        """Messages after authentication; ignored unless a consumer listens."""

    async def connect(self) -> None:
        await self.accept()
        auth: SocketAuth = self.scope.get("socket_auth") or SocketAuth(AnonymousUser())
        if auth.refusal is not None:
            await self.close(code=auth.refusal)
        elif auth.user.is_authenticated:
            await self._authenticated(auth)
        else:
            self._auth_timeout = asyncio.ensure_future(self._close_unless_authenticated())

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any) -> None:
        try:
            content = json.loads(text_data) if text_data is not None else None
        except ValueError:
            content = None
        if self.user is not None:
            await self.receive_message(content)
            return
        token = content.get("token") if isinstance(content, dict) and content.get("type") == "auth" else None
        if not isinstance(token, str):
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        auth = await authenticate_secret(token, client_address(self.scope))
        if auth.refusal is not None:
            await self.close(code=auth.refusal)
        else:
            await self._authenticated(auth)

    async def _close_unless_authenticated(self) -> None:
        await asyncio.sleep(settings.ROLLYARD_WS_AUTH_TIMEOUT_S)
        if self.user is None:
            await self.close(code=CLOSE_UNAUTHENTICATED)

    async def _authenticated(self, auth: SocketAuth) -> None:
        if self._auth_timeout is not None:
            self._auth_timeout.cancel()
        self.user = auth.user
        if auth.token_id is not None:
            self._token_group = token_group(auth.token_id)
            await self.channel_layer.group_add(self._token_group, self.channel_name)
            # A revocation committed between the check and the join was sent to nobody.
            if not await _token_active(auth.token_id):
                await self.close(code=CLOSE_UNAUTHENTICATED)
                return
        await self.start(auth.user)

    async def disconnect(self, code: int) -> None:
        if self._auth_timeout is not None:
            self._auth_timeout.cancel()
        if self._token_group is not None:
            await self.channel_layer.group_discard(self._token_group, self.channel_name)

    async def token_revoked(self, message: dict[str, Any]) -> None:
        await self.close(code=CLOSE_UNAUTHENTICATED)


@database_sync_to_async
def _token_active(token_id: int) -> bool:
    return ApiToken.objects.filter(pk=token_id, revoked_at__isnull=True).exists()
