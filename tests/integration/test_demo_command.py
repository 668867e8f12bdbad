"""The README's first command: `python -m devstack demo` (what bin/demo runs after setup)
brings up the platform, launches a run that a worker picks up, and stops cleanly, web
server and workers included, on Ctrl-C and on a SIGTERM sent to it alone."""

import os
import re
import signal
import subprocess
import sys
import time
from urllib.parse import urlparse, urlunparse

import httpx
import pytest

from devstack.processes import free_port
from devstack.services import REPO_ROOT, redis_url

pytestmark = pytest.mark.timeout(300)


def separate_redis_database(url: str) -> str:
    """The same Redis, another database number: the demo's worker and queue must not meet
    the test session's live stack, which serves another database."""
    parsed = urlparse(url)
    return urlunparse(parsed._replace(path="/9"))


def ctrl_c(demo: subprocess.Popen) -> None:
    os.killpg(demo.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole group


def sigterm_to_the_launcher_alone(demo: subprocess.Popen) -> None:
    os.kill(demo.pid, signal.SIGTERM)  # kill, a service manager, docker stop


@pytest.mark.parametrize("stop_demo", [ctrl_c, sigterm_to_the_launcher_alone])
def test_the_demo_command_serves_a_running_run_and_stops_cleanly(tmp_path, stop_demo):
    port = free_port()
    env = dict(
        os.environ,
        DATABASE_URL=f"sqlite:///{tmp_path / 'demo.sqlite3'}",
        REDIS_URL=separate_redis_database(redis_url()),
    )
    demo = subprocess.Popen(
        [sys.executable, "-m", "devstack", "demo", "--port", str(port)],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )
    try:
        printed = ""
        while "Ctrl-C stops everything" not in printed:
            line = demo.stdout.readline()
            assert line, f"the demo exited early:\n{printed}"
            printed += line
        run_url = re.search(r"watch the demo run:\s+(\S+)", printed).group(1)
        token = re.search(r"API token:\s+(\S+)", printed).group(1)
        assert "demo / demo" in printed

        headers = {"Authorization": f"Token {token}"}
        run_id = int(run_url.rstrip("/").rsplit("/", 1)[1])
        deadline = time.monotonic() + 120
        # Queued, then admitted (quotas), then a worker claims it.
        while (status := httpx.get(f"http://127.0.0.1:{port}/api/runs/{run_id}/", headers=headers).json()["status"]) in (
            "queued", "admitted",
        ):  # fmt: skip
            assert time.monotonic() < deadline, "no worker picked up the demo run"
            time.sleep(0.5)
        assert status == "running"
        assert httpx.get(run_url).status_code == 302  # the page asks for a login first
    finally:
        stop_demo(demo)
        assert demo.wait(timeout=60) == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/accounts/login/")
