"""Fixtures shared by every test folder.

Services come from the environment: REDIS_URL and DATABASE_URL point at the real
PostgreSQL and Redis in CI; unset, the embedded defaults (SQLite and an embedded Redis
started here) let the suite run on a machine with nothing installed but Python.
"""

import pytest

from devstack.services import ensure_redis


@pytest.fixture(scope="session", autouse=True)
def redis_server():
    """A Redis that answers at settings' REDIS_URL for the whole session."""
    process = ensure_redis()
    yield
    if process is not None:
        process.terminate()
        process.wait(timeout=10)
