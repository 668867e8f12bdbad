"""Fixtures shared by every test folder.

Services come from the environment: REDIS_URL and DATABASE_URL point at the real
PostgreSQL and Redis in CI; unset, SQLite and an embedded Redis let the suite run on a
machine with nothing installed but Python. That Redis is the session's own, started on a
free port by devstack.pytest_plugin before Django reads its settings (a conftest comes
too late for that), which sets REDIS_URL to it: everything here reads REDIS_URL.
"""

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from devstack.processes import free_port, start_web, start_worker, stack_env, stop, wait_for_http
from devstack.services import redis_url
from rollyard.defaults import VAR_DIR
from rollyard.task_names import RUNS_QUEUE


def pytest_collection_modifyitems(config, items):
    """Skip tests marked `gpu` where no CUDA device is visible, saying why."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    for item in gpu_items:
        reason = item.get_closest_marker("gpu").kwargs.get("reason", "needs an NVIDIA GPU")
        item.add_marker(pytest.mark.skip(reason=f"no CUDA device here; {reason}"))


@pytest.fixture(autouse=True)
def own_cache_namespace(settings) -> None:
    """Each test counts failed sign-ins and token uses (accounts.ratelimit) afresh: the test
    client always comes from 127.0.0.1, so one test's refusals would throttle the next."""
    import uuid

    settings.CACHES = {"default": {**settings.CACHES["default"], "KEY_PREFIX": f"test-{uuid.uuid4().hex}"}}


# A live stack for end-to-end and browser tests: Daphne and a Celery worker as real
# processes, sharing the test database and Redis with the test process.


@dataclass
class LiveStack:
    base_url: str
    ws_url: str
    worker_log: Path
    web_log: Path

    def logs(self) -> str:
        """The tail of both processes' logs, for a failing test's message."""
        tails = (f"--- {log.name}\n{log.read_text(errors='replace')[-6000:]}" for log in (self.web_log, self.worker_log))
        return "\n".join(tails)


@pytest.fixture(autouse=True)
def stack_settles_before_the_database_is_flushed(request):
    """After a test with the live stack, wait until the stack's processes hold no open
    transaction on the test database for a second (up to 20 s) before pytest-django
    truncates its tables. A sweep the test's last write set off (an admission after a
    cancel) could otherwise hold locks the TRUNCATE needs while waiting for ones it holds:
    PostgreSQL then reports a deadlock and aborts the teardown."""
    yield
    if "live_stack" not in request.fixturenames or connection.vendor != "postgresql":
        return
    quiet_since, deadline = time.monotonic(), time.monotonic() + 20
    with request.getfixturevalue("django_db_blocker").unblock():
        while time.monotonic() < deadline:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid() AND state <> 'idle'"
                )
                busy = cursor.fetchone()[0]
            if busy:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= 1.0:
                return
            time.sleep(0.05)


def database_url_of_test_db() -> str:
    """The URL of the database pytest-django created, for the processes we start."""
    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        # Absolute: the stack's processes may start in another folder.
        return f"sqlite:///{Path(db['NAME']).resolve()}"
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def purge_run_queue() -> None:
    """Drop run messages a previous session left in a shared broker."""
    from rollyard.celery import app

    with app.connection_for_write() as connection:
        connection.default_channel.queue_purge(RUNS_QUEUE)


@pytest.fixture(scope="session")
def stack_process_env(django_db_setup, tmp_path_factory) -> dict[str, str]:
    """The environment of a stack process that shares the test database and Redis. Run
    folders go to a folder of this session: run ids restart with every test database, and
    a worker must never resume another session's run 1 from var/runs/1."""
    runs_dir = tmp_path_factory.mktemp("runs")
    return stack_env(DATABASE_URL=database_url_of_test_db(), REDIS_URL=redis_url(), ROLLYARD_RUNS_DIR=str(runs_dir))


@pytest.fixture(scope="session")
def live_stack(stack_process_env, django_db_blocker):
    VAR_DIR.mkdir(exist_ok=True)
    env = stack_process_env
    web_log, worker_log = VAR_DIR / "test-web.log", VAR_DIR / "test-worker.log"
    for log in (web_log, worker_log):
        log.write_text("")
    purge_run_queue()
    port = free_port()
    web = start_web(port, env, web_log)
    worker = start_worker(env, worker_log)
    stack = LiveStack(f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}", worker_log, web_log)
    try:
        wait_for_http(f"{stack.base_url}/accounts/login/", web)
        yield stack
    finally:
        stop(web, worker)


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """Debian's chromium. Missing, browser tests skip, except in CI
    (ROLLYARD_REQUIRE_BROWSER=1), where .ci/run installs it and a skip would hide a gap."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        reason = "no chromium found (apt-get install chromium)"
        if os.environ.get("ROLLYARD_REQUIRE_BROWSER"):
            pytest.fail(reason + ", and ROLLYARD_REQUIRE_BROWSER is set")
        pytest.skip(reason)
    return path
