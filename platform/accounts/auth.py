"""REST authentication with the users' named API tokens (`accounts.ApiToken`).

`Authorization: Token <secret>` and `Authorization: Bearer <secret>` are both accepted.
A header with another scheme is left to the next authentication class (the session); a
token that does not authenticate answers 401 saying why. Failed token uses count against
the client's address (`accounts.ratelimit`); past the limit every token use from it
answers 429 with Retry-After until the window closes, so secrets cannot be guessed.
"""

from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.request import Request

from accounts import ratelimit
from accounts.services import TokenRejected, authenticate_token

SCHEMES = ("token", "bearer")


class ApiTokenAuthentication(BaseAuthentication):
    def authenticate(self, request: Request):
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower().decode("latin1") not in SCHEMES:
            return None
        address = ratelimit.client_address(request)
        try:
            ratelimit.check(ratelimit.TOKEN, address)
        except ratelimit.Refused as refused:
            raise exceptions.Throttled(wait=refused.retry_after_s, detail=f"{refused} (failed token uses)") from None
        try:
            if len(parts) != 2:
                raise TokenRejected("malformed Authorization header: expected 'Token <secret>' or 'Bearer <secret>'")
            token = authenticate_token(parts[1].decode("latin1"))
        except TokenRejected as rejected:
            ratelimit.record_failure(ratelimit.TOKEN, address)
            raise exceptions.AuthenticationFailed(str(rejected)) from None
        return token.user, token

    def authenticate_header(self, request: Request) -> str:
        # Present, so DRF answers a missing or bad credential with 401, not 403.
        return "Token"
