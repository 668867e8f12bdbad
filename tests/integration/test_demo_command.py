"""The README's first command: `python -m devstack demo` (what bin/demo runs after setup)
brings up the platform, launches a run that a worker picks up, and stops cleanly, every
process it started included (web server, workers, Ray, its embedded Redis), on Ctrl-C,
on a SIGTERM sent to it alone, and on a SIGTERM to `bin/demo` started in the background
of a non-interactive shell, within the stop's grace period."""

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

import httpx
import pytest

from devstack.processes import STOP_GRACE_S, free_port
from devstack.services import answers_ping, redis_url, separate_redis_database
from rollyard.defaults import EMBEDDED_REDIS_URL, REPO_ROOT

pytestmark = pytest.mark.timeout(300)

# After the grace period `stop` kills; what is left is the kernel's part (a SIGKILLed
# process is gone within milliseconds) and this test's polling.
STOP_MARGIN_S = 5.0


# --------------------------------------------------------------- processes, from /proc
@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    session: int
    cmdline: str


def live_processes() -> dict[int, Proc]:
    """Every process not yet dead (zombies count as dead: only their exit status is left)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:  # exited while we looked
            continue
        # "pid (comm) state ppid pgrp session ...": comm may hold spaces and parentheses.
        state, ppid, _pgrp, session = stat.rsplit(")", 1)[1].split()[:4]
        if state not in ("Z", "X"):
            pid = int(entry.name)
            found[pid] = Proc(pid, int(ppid), int(session), cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return found


def started_by(launcher: int) -> dict[int, Proc]:
    """The launcher and everything it started: its descendants, and every process in their
    sessions (each stack process leads one; Ray's and Celery's children stay in it, and an
    orphan whose parent died keeps its session, not its parent)."""
    procs = live_processes()
    tree = {launcher}
    while grown := {p.pid for p in procs.values() if p.ppid in tree} - tree:
        tree |= grown
    sessions = {procs[pid].session for pid in tree if pid in procs}
    return {p.pid: p for p in procs.values() if p.pid in tree or p.session in sessions}


def still_alive(snapshot: dict[int, Proc]) -> dict[int, Proc]:
    """Processes of `snapshot` still running, and any process that has since appeared in
    one of its sessions (a Ray worker started while the stack was stopping)."""
    sessions = {p.session for p in snapshot.values()}
    return {p.pid: p for p in live_processes().values() if p.pid in snapshot or p.session in sessions}


# --------------------------------------------------------------- how the demo is started and stopped
@dataclass
class Demo:
    launcher: int  # the pid of `python -m devstack demo`, which the signal goes to
    process: subprocess.Popen  # what the test waits on; its exit status is the launcher's
    output: Path


def in_the_foreground(port: int, env: dict[str, str], output: Path) -> Demo:
    """As from a terminal: the launcher leads its own process group."""
    process = subprocess.Popen(
        [sys.executable, "-m", "devstack", "demo", "--port", str(port)],
        cwd=REPO_ROOT, env=env, stdout=output.open("wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    return Demo(process.pid, process, output)


def in_the_background_of_a_script(port: int, env: dict[str, str], output: Path) -> Demo:
    """`bin/demo &` in a non-interactive shell with no terminal (start_new_session: no
    controlling tty): no job control, so the launcher shares the shell's process group and
    starts with SIGINT ignored. The shell waits for it only to hand back its exit status."""
    process = subprocess.Popen(
        ["bash", "-c", f'bin/demo --port {port} > "$DEMO_OUTPUT" 2>&1 & echo $!; wait $!'],
        cwd=REPO_ROOT, env=dict(env, DEMO_OUTPUT=str(output)), stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    return Demo(int(process.stdout.readline()), process, output)


def ctrl_c(demo: Demo) -> None:
    os.killpg(demo.launcher, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole group


def sigterm_to_the_launcher_alone(demo: Demo) -> None:
    os.kill(demo.launcher, signal.SIGTERM)  # kill, a service manager, docker stop


@dataclass
class Way:
    start: Callable[[int, dict[str, str], Path], Demo]
    stop: Callable[[Demo], None]
    embedded_redis: bool  # the demo starts its own Redis (REDIS_URL unset), as on a bare machine


WAYS = {
    "ctrl-c": Way(in_the_foreground, ctrl_c, embedded_redis=False),
    "sigterm": Way(in_the_foreground, sigterm_to_the_launcher_alone, embedded_redis=False),
    "sigterm-to-bin-demo-in-a-script": Way(in_the_background_of_a_script, sigterm_to_the_launcher_alone, embedded_redis=True),
}


def wait_for_banner(demo: Demo, timeout: float = 180.0) -> str:
    deadline = time.monotonic() + timeout
    while "Ctrl-C stops everything" not in (printed := demo.output.read_text(errors="replace")):
        assert demo.process.poll() is None, f"the demo exited early:\n{printed}"
        assert time.monotonic() < deadline, f"the demo did not come up within {timeout:.0f} s:\n{printed}"
        time.sleep(0.5)
    return printed


@pytest.mark.parametrize("way", WAYS.values(), ids=WAYS.keys())
def test_the_demo_command_serves_a_running_run_and_stops_everything_it_started(tmp_path, way):
    env = dict(os.environ, DATABASE_URL=f"sqlite:///{tmp_path / 'demo.sqlite3'}")
    if way.embedded_redis:
        embedded = urlparse(EMBEDDED_REDIS_URL)
        if answers_ping(embedded.hostname, embedded.port):
            pytest.skip(f"something already answers at {embedded.netloc} (a running demo's Redis?): "
                        "the demo would use it instead of starting its own")  # fmt: skip
        env.pop("REDIS_URL", None)
    else:
        # The session's Redis, another database: the demo's worker and queue must not meet
        # the session's live stack.
        env["REDIS_URL"] = separate_redis_database(redis_url())
    port = free_port()
    output = tmp_path / "demo.log"
    output.touch()  # the background shell opens it in its own time
    demo = way.start(port, env, output)
    try:
        printed = wait_for_banner(demo)
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
        # Stop it mid-run, the hardest case: the run worker's warm shutdown would wait for
        # the whole run, so it is killed after the grace period, and Ray with it. A first
        # step done means the trainer actor is up on Ray.
        while (run := httpx.get(f"http://127.0.0.1:{port}/api/runs/{run_id}/", headers=headers).json())["current_step"] < 1:
            assert run["status"] == "running", run
            assert time.monotonic() < deadline + 120, "the demo run did no step"
            time.sleep(0.5)
    finally:
        snapshot = started_by(demo.launcher)
        way.stop(demo)
        stopped_at = time.monotonic()
        try:
            exit_status = demo.process.wait(timeout=STOP_GRACE_S + STOP_MARGIN_S)
        except subprocess.TimeoutExpired:
            exit_status = None
        stop_s = time.monotonic() - stopped_at
        left = still_alive(snapshot)
        for pid in left:  # don't leave them to the next test
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    # The web server, both Celery workers and their pools, Ray (raylet, GCS, the trainer
    # actor's worker), the embedded Redis when the demo started it.
    commands = "\n".join(p.cmdline for p in snapshot.values())
    assert all(name in commands for name in ("daphne", "celery", "raylet", "ray::")), commands
    assert ("redis-server" in commands) == way.embedded_redis, commands
    assert exit_status == 0, f"the demo did not exit within {STOP_GRACE_S + STOP_MARGIN_S:.0f} s of the signal"
    assert not left, "still running after the demo exited:\n" + "\n".join(p.cmdline for p in left.values())
    assert stop_s <= STOP_GRACE_S + STOP_MARGIN_S
    print(f"{len(snapshot)} processes stopped in {stop_s:.1f} s:\n{commands}")
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/accounts/login/")
    if way.embedded_redis:
        embedded = urlparse(EMBEDDED_REDIS_URL)
        assert not answers_ping(embedded.hostname, embedded.port)
