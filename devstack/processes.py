"""Start the stack's long-running processes (web, worker) with one shared environment."""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rollyard.defaults import REPO_ROOT, VAR_DIR

PLATFORM_DIR = REPO_ROOT / "platform"
# How long `stop` waits after SIGTERM before it kills: long enough for Daphne and an idle
# Celery worker to close (about a second each), short enough that a demo stops promptly.
STOP_GRACE_S = 10.0
# After SIGKILL, how long `stop` waits for orphans (reparented, so not waited on) to die.
KILL_WAIT_S = 5.0


def stack_env(**overrides: str) -> dict[str, str]:
    """The environment every process of the stack gets: this one, plus settings module."""
    env = dict(os.environ)
    env.setdefault("DJANGO_SETTINGS_MODULE", "rollyard.settings")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(overrides)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_web(port: int, env: dict[str, str], log: Path | None = None) -> subprocess.Popen:
    """Daphne serving the ASGI app (HTTP pages, REST API, websockets, static files)."""
    return _spawn(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "rollyard.asgi:application"],
        env,
        log,
    )


def start_worker(env: dict[str, str], log: Path | None = None, pool: str = "prefork") -> subprocess.Popen:
    """A Celery worker for run drivers and housekeeping. One run at a time per worker:
    a run's engine already uses the machine's cores."""
    return _spawn(
        [
            sys.executable, "-m", "celery", "-A", "rollyard.celery", "worker",
            "--queues", "runs,celery", "--concurrency", "1", "--pool", pool,
            "--loglevel", "INFO", "--without-gossip", "--without-mingle",
        ],
        env,
        log,
    )


def start_housekeeper(env: dict[str, str], log: Path | None = None) -> subprocess.Popen:
    """A Celery worker for the default queue only, with Celery beat inside it: the periodic
    reconciler, checkpoint retention and admission sweeps. Apart from the run workers,
    because a run holds its worker for its whole life and a dead run worker is exactly what
    the reconciler must notice. Beat's schedule file lives under var/."""
    return _spawn(
        [
            sys.executable, "-m", "celery", "-A", "rollyard.celery", "worker",
            "--queues", "celery", "--concurrency", "1", "--pool", "solo",
            "--beat", "--schedule", str(VAR_DIR / "celerybeat-schedule"),
            "--loglevel", "INFO", "--without-gossip", "--without-mingle", "--hostname", "housekeeper@%h",
        ],
        env,
        log,
    )


@dataclass
class Stack:
    """A web server and workers started together (`start_stack`), each with a log file."""

    base_url: str
    logs: dict[str, Path]
    processes: list[subprocess.Popen]

    def tails(self, chars: int = 3000) -> str:
        """The end of every log, for a failure's message."""
        return "\n".join(f"--- {name}\n{log.read_text(errors='replace')[-chars:]}" for name, log in self.logs.items())

    def wait_for(self, condition: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Poll `condition` until it holds; after `timeout_s` raise TimeoutError saying
        `what` did not happen, with the logs' tails."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not within {timeout_s:.0f} s\n{self.tails()}")
            time.sleep(0.5)

    def stop(self) -> None:
        stop(*self.processes)


def start_stack(env: dict[str, str], folder: Path, housekeeper: bool = False) -> Stack:
    """Daphne, a run worker and, with `housekeeper`, the housekeeping worker with beat, all
    with `env`, logging to folder/{web,worker,housekeeper}.log; returns once the web
    server answers. The caller stops it (`Stack.stop`)."""
    names = ["web", "worker"] + (["housekeeper"] if housekeeper else [])
    logs = {name: folder / f"{name}.log" for name in names}
    port = free_port()
    starters = {"web": lambda log: start_web(port, env, log), "worker": lambda log: start_worker(env, log),
                "housekeeper": lambda log: start_housekeeper(env, log)}  # fmt: skip
    stack = Stack(f"http://127.0.0.1:{port}", logs, [])
    try:
        for name in names:
            stack.processes.append(starters[name](logs[name]))
        wait_for_http(f"{stack.base_url}/accounts/login/", stack.processes[0])
    except BaseException:
        stack.stop()
        raise
    return stack


def wait_for_http(url: str, process: subprocess.Popen, timeout: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[2]} exited with {process.returncode} before serving {url}")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing served {url} within {timeout:.0f} s")


def stop(*processes: subprocess.Popen | None, grace_s: float = STOP_GRACE_S) -> None:
    """Stop processes and everything they started.

    Each leads a session of its own (`_spawn`, `services.ensure_redis`), and what it starts
    stays in that session even where it makes a process group of its own, as Ray's raylet
    does for the worker processes that run actors: so the whole session is signalled, not
    only the leader's group. SIGTERM first (Celery's warm shutdown, Daphne's graceful
    close), SIGKILL after `grace_s`: a worker mid-run would otherwise wait for the whole
    run to finish. A session is swept also when its leader has already exited: its
    children (Celery's pool, Ray) may outlive it.
    """
    started = [p for p in processes if p is not None]
    for process in started:
        _signal_session(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for process in started:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        _signal_session(process.pid, signal.SIGKILL)
        process.wait()
    # Orphans are not ours to reap: wait until the kernel has taken them down.
    kill_deadline = time.monotonic() + KILL_WAIT_S
    while any(_session_members(p.pid) for p in started) and time.monotonic() < kill_deadline:
        time.sleep(0.05)


def _signal_session(sid: int, sig: int) -> None:
    try:
        os.killpg(sid, sig)  # the leader's group: all there is where /proc is missing
    except ProcessLookupError:
        pass
    for pid in _session_members(sid):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _session_members(sid: int) -> list[int]:
    """The live processes of session `sid` (Linux's /proc; none elsewhere). Zombies are
    left out: they are dead, only their exit status waits for their parent."""
    members = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            # "pid (comm) state ppid pgrp session ...": comm may hold spaces and parentheses.
            state, _ppid, _pgrp, session = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:4]
        except (OSError, ValueError):  # gone meanwhile
            continue
        if int(session) == sid and state not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def _spawn(argv: list[str], env: dict[str, str], log: Path | None) -> subprocess.Popen:
    out = open(log, "ab") if log else None
    # A new session, which `stop` signals whole: it reaches the processes they start (Ray).
    return subprocess.Popen(argv, env=env, cwd=PLATFORM_DIR, stdout=out, stderr=subprocess.STDOUT if out else None,
                            start_new_session=True)
