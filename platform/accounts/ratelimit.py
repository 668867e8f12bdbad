"""Limits on failed sign-ins and failed token uses, counted in Django's cache (Redis).

A limit is "at most N failures per window": the window opens at the first failure of a
key (a client address, an address and a username) and lasts `window_s`; once N failures
are counted, the key is refused until the window closes, and the refusal says when
(`Retry-After`). Only failures count, so a user who signs in or calls the API correctly
is never slowed down; an attacker guessing secrets gets N guesses per window.

Limits live in settings.ROLLYARD_RATE_LIMITS as {"name": (failures, window_s)}. The
cache's own key prefix keeps stacks that share one Redis apart.

While the cache is unreachable (Redis restarting) limits are neither checked nor
counted, with a warning: every API call checks one, and refusing them all for the
outage would take the web tier down with Redis.
"""

import functools
import hashlib
import logging
import math
import time
from collections.abc import Callable
from typing import TypeVar

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest
from redis.exceptions import ConnectionError as CacheUnreachable
from redis.exceptions import TimeoutError as CacheTimeout

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., None])

LOGIN = "login"  # failed sign-ins of one username from one address (login page, admin)
LOGIN_ADDRESS = "login_address"  # failed sign-ins from one address, whatever the username
TOKEN = "token"  # failed API token uses (REST and websockets) from one address


class Refused(Exception):
    """Too many failures: refused for `retry_after_s` more seconds."""

    def __init__(self, limit: str, retry_after_s: int):
        super().__init__(limit, retry_after_s)
        self.limit = limit
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        return f"too many failed attempts; try again in {self.retry_after_s} s"


def _keys(limit: str, key: str) -> tuple[str, str]:
    # Hashed: keys hold usernames and addresses of any length and alphabet.
    digest = hashlib.sha256(key.encode()).hexdigest()[:32]
    return f"ratelimit:{limit}:{digest}:count", f"ratelimit:{limit}:{digest}:opened"


def _limit(limit: str) -> tuple[int, int]:
    failures, window_s = settings.ROLLYARD_RATE_LIMITS[limit]
    return int(failures), int(window_s)


def _unless_cache_down(function: F) -> F:
    @functools.wraps(function)
    def guarded(limit: str, key: str) -> None:
        try:
            function(limit, key)
        except (CacheUnreachable, CacheTimeout) as down:
            logger.warning("rate limit %s not applied, the cache is unreachable: %s", limit, down)

    return guarded  # type: ignore[return-value]


@_unless_cache_down
def check(limit: str, key: str) -> None:
    """Raise Refused while `key` has used up its failures for the window."""
    failures, window_s = _limit(limit)
    count_key, opened_key = _keys(limit, key)
    values = cache.get_many([count_key, opened_key])
    if values.get(count_key, 0) < failures:
        return
    opened = values.get(opened_key, time.time())
    raise Refused(limit, max(1, math.ceil(opened + window_s - time.time())))


@_unless_cache_down
def record_failure(limit: str, key: str) -> None:
    """Count one failure of `key`; the first one opens its window."""
    _, window_s = _limit(limit)
    count_key, opened_key = _keys(limit, key)
    # add() only sets a missing key, so concurrent first failures open one window, and
    # incr() is Redis' atomic INCR: no failure is lost between two processes.
    cache.add(opened_key, time.time(), timeout=window_s)
    cache.add(count_key, 0, timeout=window_s)
    try:
        cache.incr(count_key)
    except ValueError:  # the window expired between add() and incr(): open a new one
        cache.add(opened_key, time.time(), timeout=window_s)
        cache.add(count_key, 1, timeout=window_s)


@_unless_cache_down
def reset(limit: str, key: str) -> None:
    cache.delete_many(list(_keys(limit, key)))


def client_address(request: HttpRequest) -> str:
    """The address failures are counted against. REMOTE_ADDR is the peer Daphne saw
    (with --proxy-headers, the client a trusted proxy names)."""
    return request.META.get("REMOTE_ADDR") or "unknown"
