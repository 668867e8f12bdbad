"""Rate limit of the sign-in forms (the login page and the admin's): failed sign-ins are
counted per address and username and per address (`accounts.ratelimit`); past the limit
a sign-in answers 429 with Retry-After, whatever the password, until the window closes."""

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse
from django.urls import reverse

from accounts import ratelimit


class LoginRateLimitMiddleware:
    """After CsrfViewMiddleware and AuthenticationMiddleware. A sign-in that fails
    re-renders its form (200); one that succeeds redirects (302) and clears the count of
    its username."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response
        self._login_paths: frozenset[str] | None = None

    def login_paths(self) -> frozenset[str]:
        # Reversed on first use: the URL configuration is not loaded when middleware is built.
        if self._login_paths is None:
            self._login_paths = frozenset({reverse("login"), reverse("admin:login")})
        return self._login_paths

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.method != "POST" or request.path not in self.login_paths():
            return self.get_response(request)
        address = ratelimit.client_address(request)
        username = str(request.POST.get("username", ""))[:150].lower()
        keys = [(ratelimit.LOGIN, f"{address} {username}"), (ratelimit.LOGIN_ADDRESS, address)]
        try:
            for limit, key in keys:
                ratelimit.check(limit, key)
        except ratelimit.Refused as refused:
            response = HttpResponse(
                f"Too many failed sign-ins; try again in {refused.retry_after_s} s.\n",
                status=429,
                content_type="text/plain; charset=utf-8",
            )
            response["Retry-After"] = str(refused.retry_after_s)
            return response
        response = self.get_response(request)
        if response.status_code == 200:
            for limit, key in keys:
                ratelimit.record_failure(limit, key)
        elif response.status_code == 302 and request.user.is_authenticated:
            ratelimit.reset(*keys[0])
        return response
