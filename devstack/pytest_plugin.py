"""The Redis of a test session, in place before Django reads its settings.

Loaded with `-p devstack.pytest_plugin` (pyproject.toml's addopts): a conftest comes too
late, since pytest-django loads the settings, and with them REDIS_URL, before any
conftest. With REDIS_URL set (CI, a real Redis), the session uses it and fails at once
when it does not answer. Unset, the session starts a Redis of its own on a free port
(devstack.services.start_private_redis) and sets REDIS_URL to it for itself and every
process it starts, then stops it when pytest exits: a running demo (at the embedded
address) and other sessions never see this session's keys or tasks, and stopping one of
them never takes this session's Redis away.
"""

import os
from urllib.parse import urlparse

import pytest

from devstack.processes import stop
from devstack.services import answers_ping, start_private_redis


@pytest.hookimpl(tryfirst=True)  # before pytest-django's, which loads the settings
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser, args: list[str]) -> None:
    options = parser.parse_known_args(args)
    if options.help or options.version:  # pytest --help: no session to serve
        return
    if "REDIS_URL" in os.environ:
        check_redis_answers(os.environ["REDIS_URL"])
        return
    process, url = start_private_redis()
    early_config.add_cleanup(lambda: stop(process))
    os.environ["REDIS_URL"] = url


def check_redis_answers(url: str) -> None:
    parsed = urlparse(url)
    if not answers_ping(parsed.hostname or "127.0.0.1", parsed.port or 6379):
        raise pytest.UsageError(f"REDIS_URL={url} does not answer: start that Redis, or unset REDIS_URL for a private embedded one")
