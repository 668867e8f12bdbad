"""A Ray cluster of our own on this machine, for a platform that reaches Ray through
RAY_ADDRESS: a head from `ray start --head` on a port that is neither Redis's nor the
embedded Redis's, and as many nodes joining it as asked for, each `ray start --block` in
a session of its own. `stop` ends exactly these (devstack.processes.stop signals their
sessions, which holds the actors' worker processes too), never `ray stop`, which ends
every Ray on the machine.

Ray 2.5x clusters authenticate clients with a token: the cluster makes one of its own,
and `RayCluster.env` is the environment every driver and platform process that talks to
it needs (the token and RAY_ADDRESS). A driver must be a process started with that
environment: Ray reads the token once per process.
"""

import os
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from devstack.processes import free_port, stop

RAY = str(Path(sys.executable).parent / "ray")
# Redis's default port and the embedded Redis's (rollyard.defaults): `ray start --head`
# would otherwise take 6379, and a free port handed out here must stay free of both.
RESERVED_PORTS = frozenset({6379, 6390})
# How long the head's GCS may take to answer, and after that the head's own raylet to
# register (a node joining before it is ready fails to start).
HEAD_START_S = 60.0
HEAD_SETTLE_S = 5.0
# `ray start --block` stops its node's processes on SIGTERM within a few seconds.
STOP_GRACE_S = 5.0


def ray_port() -> int:
    """A free TCP port for a Ray head, never one of RESERVED_PORTS."""
    while (port := free_port()) in RESERVED_PORTS:
        pass
    return port


@dataclass
class RayCluster:
    address: str
    token: str
    temp_dir: Path
    nodes: list[subprocess.Popen] = field(default_factory=list)

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The environment of a process that drives or watches this cluster: `base` (this
        process's environment by default) without its RAY_ variables, plus the token and
        RAY_ADDRESS."""
        base = os.environ if base is None else base
        auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token, "RAY_ADDRESS": self.address}
        return {key: value for key, value in base.items() if not key.startswith("RAY_")} | auth

    def add_node(self, num_cpus: int = 1, num_gpus: int = 0) -> subprocess.Popen:
        """Start a node that joins the head; Ray counts its resources once it registers."""
        return self._start([f"--address={self.address}"], num_cpus, num_gpus)

    def stop(self) -> None:
        stop(*reversed(self.nodes), grace_s=STOP_GRACE_S)

    def _start(self, role: list[str], num_cpus: int, num_gpus: int) -> subprocess.Popen:
        argv = [RAY, "start", *role, f"--num-cpus={num_cpus}", f"--num-gpus={num_gpus}", "--disable-usage-stats",
                "--block", f"--temp-dir={self.temp_dir}"]  # fmt: skip
        env = self.env()
        del env["RAY_ADDRESS"]  # `ray start` takes its role from the arguments alone
        node = subprocess.Popen(argv, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # fmt: skip
        self.nodes.append(node)
        return node


def start_ray_head(temp_dir: Path, num_cpus: int = 1, num_gpus: int = 0) -> RayCluster:
    """Start a head (no dashboard) with `num_cpus` CPUs and `num_gpus` GPUs (logical
    resources: Ray counts what it is told; no device is needed for a GPU it is told of)
    and wait until it answers. The caller stops it (`RayCluster.stop`)."""
    port = ray_port()
    cluster = RayCluster(f"127.0.0.1:{port}", secrets.token_hex(32), Path(temp_dir))
    head = cluster._start(["--head", f"--port={port}", "--include-dashboard=false"], num_cpus, num_gpus)
    try:
        deadline = time.monotonic() + HEAD_START_S
        while not _answers(port):
            if head.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Ray head did not start on port {port} (exit status {head.poll()})")
            time.sleep(0.2)
        time.sleep(HEAD_SETTLE_S)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False
