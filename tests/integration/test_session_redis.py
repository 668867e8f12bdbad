"""A test session without REDIS_URL has a Redis of its own (devstack.pytest_plugin). Two
tiny pytest sessions run at once beside a demo's Redis at the embedded address: each one
writes through the platform's paths to Redis (the cache, a run task queued on Celery's
broker) and, once both have, finds only its own key value and its own task; neither
leaves a trace in the demo's Redis, and each one's Redis is gone when it ends."""

import os
import subprocess
import sys
import uuid
from urllib.parse import urlparse

import pytest
import redis

from devstack.processes import stop
from devstack.services import answers_ping, ensure_redis
from rollyard.defaults import EMBEDDED_REDIS_URL, REPO_ROOT
from rollyard.task_names import RUNS_QUEUE

pytestmark = pytest.mark.timeout(300)

SESSIONS = ("first", "second")
SESSION_TIMEOUT_S = 180

# The tiny session's one test. Both sessions use the same cache key, so that sessions
# sharing a Redis would read each other's value; each queues a run task with its own id.
SESSION_TEST = """
import os
import time
from pathlib import Path

import redis
from django.conf import settings
from django.core.cache import cache

from rollyard.celery import app
from rollyard.task_names import EXECUTE_RUN, RUNS_QUEUE


def test_its_redis_holds_its_own_key_and_task_alone():
    name, marker, folder = os.environ["SESSION_NAME"], os.environ["MARKER"], Path(os.environ["SESSION_FOLDER"])
    cache.set(f"isolation-{marker}", name)
    app.send_task(EXECUTE_RUN, args=[0], queue=RUNS_QUEUE, task_id=f"isolation-{marker}-{name}")
    (folder / f"{name}.url").write_text(settings.REDIS_URL)
    # Look only once every session has written.
    deadline = time.monotonic() + 120
    while not all((folder / f"{session}.url").exists() for session in os.environ["SESSIONS"].split(",")):
        assert time.monotonic() < deadline, "another session never wrote"
        time.sleep(0.1)
    assert cache.get(f"isolation-{marker}") == name
    queued = redis.Redis.from_url(settings.REDIS_URL).lrange(RUNS_QUEUE, 0, -1)
    assert len(queued) == 1 and f"isolation-{marker}-{name}".encode() in queued[0], queued
"""


def traces_of(url: str, marker: str) -> list[str]:
    """Every key in any database of the Redis server at `url` whose name holds `marker`,
    and every run queue message that does (a queued task's id is in its headers)."""
    parsed = urlparse(url)
    found = []
    with redis.Redis(host=parsed.hostname, port=parsed.port) as server:
        databases = int(server.config_get("databases")["databases"])
    for db in range(databases):
        with redis.Redis(host=parsed.hostname, port=parsed.port, db=db) as database:
            found += [f"db {db}: key {key!r}" for key in database.scan_iter(match=f"*{marker}*")]
            found += [f"db {db}: task {m[:80]!r}" for m in database.lrange(RUNS_QUEUE, 0, -1) if marker.encode() in m]
    return found


def test_two_sessions_and_a_demo_never_share_a_redis(tmp_path):
    # The demo's Redis, started here as `bin/demo` starts it. Not one already there: its
    # owner (a demo, or a session of a checkout before devstack.pytest_plugin) may stop it
    # at any moment.
    embedded = urlparse(EMBEDDED_REDIS_URL)
    if answers_ping(embedded.hostname, embedded.port):
        pytest.skip(f"something already answers at {embedded.netloc} (a running demo's Redis?)")
    demo_redis = ensure_redis(EMBEDDED_REDIS_URL)
    marker = uuid.uuid4().hex
    test_file = tmp_path / "test_tiny_session.py"
    test_file.write_text(SESSION_TEST)
    env = {name: value for name, value in os.environ.items() if name != "REDIS_URL"}
    env |= {"MARKER": marker, "SESSION_FOLDER": str(tmp_path), "SESSIONS": ",".join(SESSIONS)}
    sessions: dict[str, subprocess.Popen] = {}
    try:
        # This checkout's pytest configuration (its plugin), none of tests/'s conftests.
        sessions = {
            name: subprocess.Popen(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", str(REPO_ROOT / "pyproject.toml"),
                 "--rootdir", str(REPO_ROOT), str(test_file)],
                cwd=REPO_ROOT, env=env | {"SESSION_NAME": name}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
            for name in SESSIONS
        }
        outputs = {name: session.communicate(timeout=SESSION_TIMEOUT_S)[0] for name, session in sessions.items()}
        for name, session in sessions.items():
            assert session.returncode == 0, f"the {name} session failed:\n{outputs[name]}"
        urls = {name: (tmp_path / f"{name}.url").read_text() for name in SESSIONS}
        assert traces_of(EMBEDDED_REDIS_URL, marker) == []
    finally:
        for session in sessions.values():  # one that hung past its timeout
            if session.poll() is None:
                session.kill()
                session.wait()
        stop(demo_redis)
    addresses = {urlparse(url).netloc for url in urls.values()}
    assert len(addresses) == len(SESSIONS) and urlparse(EMBEDDED_REDIS_URL).netloc not in addresses, urls
    assert urlparse(os.environ["REDIS_URL"]).netloc not in addresses  # nor this session's
    for url in urls.values():  # each session stopped its Redis
        assert not answers_ping(urlparse(url).hostname, urlparse(url).port), url
