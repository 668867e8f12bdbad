"""Load on the platform's real services, loopback only, bounded in count and time:

1. **Admission storm**: 50 launches at once by 10 users of two teams (one thread and one
   PostgreSQL connection each) while 4 sweeper threads race them, against a 12-GPU pool
   and team quotas of 4 and 3 GPUs; then admitted runs finish while sweeps race the
   releases until all 50 ran. Counted from the database: GPUs ever held at once per team
   and pool (the ledger replayed), admissions per run.
2. **Fan-out**: 200 websocket clients (the `websockets` library, token auth) on one run
   of a live Daphne; 20 event batches published to the run's group; every client must
   receive every batch. Latency from publish to receipt per client and batch.
3. **Revocation**: a token streaming on a websocket and polling the API is revoked
   through the API (DELETE /api/tokens/<id>/ with another token); the time until the API
   answers 401 and until the socket is closed (4401), over 5 trials.

    DATABASE_URL=postgres://... REDIS_URL=redis://... .venv/bin/python -m bench.load

Writes bench/results/load.json and its line in docs/benchmarks.md. The integration tests
(tests/integration/test_load_*.py) run the same scenarios and assert on them.
"""

import asyncio
import importlib
import json
import logging
import os
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from statistics import quantiles
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent

LAUNCH_USERS = 10
LAUNCHES_PER_USER = 5
SWEEPERS = 4
POOL_GPUS = 12
TEAM_QUOTAS = (4, 3)  # max_concurrent_gpus of the two teams; 5 users each
WS_CLIENTS = 200
WS_BATCHES = 20
REVOCATION_TRIALS = 5
DEADLINE_S = 100  # every scenario stops by itself well within two minutes


# --- 1. admission storm ------------------------------------------------------------------------


def in_threads(target: Callable[[int], None], count: int, start: threading.Barrier, errors: list[str]) -> list[threading.Thread]:
    from django.db import connection

    def body(index: int) -> None:
        try:
            start.wait()
            target(index)
        except Exception as exc:  # collected: the caller reports them
            errors.append(repr(exc))
        finally:
            connection.close()  # this thread's own connection

    threads = [threading.Thread(target=body, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    return threads


def most_gpus_ever_held(allocations) -> int:
    """The peak of GPUs held at once, replayed from the allocation ledger. A sweep stamps
    admitted_at after it saw the release that freed the GPUs committed, so at equal times
    the release comes first."""
    changes = []
    for allocation in allocations.filter(admitted_at__isnull=False):
        changes.append((allocation.admitted_at, 1, allocation.gpus))
        if allocation.released_at is not None:
            changes.append((allocation.released_at, 0, -allocation.gpus))
    held = peak = 0
    for _, _, delta in sorted(changes):
        held += delta
        peak = max(peak, held)
    return peak


def admission_storm(prefix: str) -> dict[str, Any]:
    """Scenario 1 on the configured database. Requested sweeps run in the requesting
    thread (the function the Celery task calls), so every commit is one more sweep."""
    from django.contrib.auth import get_user_model

    from accounts.models import Role, Team
    from accounts.services import add_member
    from runs.admission import admit_queued_runs
    from quotas.models import Accelerator, Allocation, Pool, Quota
    from runs.launch import create_run
    from runs.lifecycle import IllegalTransition, transition
    from runs.models import Run, RunStatus, RunStatusChange

    pool = Pool.objects.create(name=f"{prefix}-gpu", accelerator=Accelerator.GPU, gpu_type="H100", capacity=POOL_GPUS)
    teams = [Team.objects.create(name=f"{prefix}-team{index}") for index in range(len(TEAM_QUOTAS))]
    for team, gpus in zip(teams, TEAM_QUOTAS, strict=True):
        Quota.objects.create(pool=pool, team=team, max_concurrent_gpus=gpus)
    users = [get_user_model().objects.create_user(f"{prefix}-user{index}") for index in range(LAUNCH_USERS)]
    team_of = {user.pk: teams[index % len(teams)] for index, user in enumerate(users)}
    for user in users:
        add_member(team_of[user.pk], user, Role.MEMBER)
    spec = {"resources": {"gpus": 1, "executor": "inprocess"}, "training": {"steps": 1}}
    errors: list[str] = []
    deadline = time.monotonic() + DEADLINE_S

    def sweep_until(done: threading.Event) -> Callable[[int], None]:
        def sweep(index: int) -> None:
            while not done.is_set() and time.monotonic() < deadline:
                admit_queued_runs(pool.pk)
                time.sleep(0.005)

        return sweep

    # 1a. 50 launches at once (10 users × 5), sweeps racing them.
    started = time.perf_counter()
    launches_done = threading.Event()

    def launch(index: int) -> None:
        user = users[index % LAUNCH_USERS]
        create_run(user, spec, name=f"{prefix}-run{index}", team=team_of[user.pk], pool=pool.name)

    launches = LAUNCH_USERS * LAUNCHES_PER_USER
    barrier = threading.Barrier(launches + SWEEPERS)
    launchers = in_threads(launch, launches, barrier, errors)
    sweepers = in_threads(sweep_until(launches_done), SWEEPERS, barrier, errors)
    for thread in launchers:
        thread.join()
    launch_s = time.perf_counter() - started
    launches_done.set()
    for thread in sweepers:
        thread.join()
    admit_queued_runs(pool.pk)
    runs = Run.objects.filter(team__in=teams)
    admitted_after_launch = runs.filter(status=RunStatus.ADMITTED).count()

    # 1b. Admitted runs run and finish while sweeps race the releases, until all ran.
    finished = threading.Event()

    def finish(index: int) -> None:
        while runs.exclude(status=RunStatus.SUCCEEDED).exists() and time.monotonic() < deadline:
            run = runs.filter(status=RunStatus.ADMITTED).order_by("?").first()
            if run is None:
                time.sleep(0.01)
                continue
            try:
                transition(run.pk, RunStatus.RUNNING, f"picked up by finisher {index}")
            except IllegalTransition:
                continue  # another finisher took it
            transition(run.pk, RunStatus.SUCCEEDED, "all steps done")
        finished.set()

    barrier = threading.Barrier(SWEEPERS + SWEEPERS)
    threads = in_threads(finish, SWEEPERS, barrier, errors) + in_threads(sweep_until(finished), SWEEPERS, barrier, errors)
    for thread in threads:
        thread.join()
    total_s = time.perf_counter() - started

    allocations = Allocation.objects.filter(pool=pool)
    peaks = {team.name: most_gpus_ever_held(allocations.filter(run__team=team)) for team in teams}
    limits = {team.name: gpus for team, gpus in zip(teams, TEAM_QUOTAS, strict=True)}
    admissions = Counter(
        RunStatusChange.objects.filter(run__in=runs, to_status=RunStatus.ADMITTED).values_list("run_id", flat=True)
    )
    return {
        "launches": launches,
        "users": LAUNCH_USERS,
        "runs_stored": runs.count(),
        "errors": errors,
        "launch_s": round(launch_s, 2),
        "total_s": round(total_s, 2),
        "admitted_while_launching": admitted_after_launch,
        "team_quota_gpus": limits,
        "team_peak_gpus": peaks,
        "pool_peak_gpus": most_gpus_ever_held(allocations),
        "pool_gpus": POOL_GPUS,
        "over_admissions": sum(max(0, peaks[name] - limits[name]) for name in limits),
        "runs_succeeded": runs.filter(status=RunStatus.SUCCEEDED).count(),
        "runs_admitted_once": sum(1 for count in admissions.values() if count == 1),
        "runs_admitted_twice_or_more": sum(1 for count in admissions.values() if count > 1),
    }


# --- 2. websocket fan-out ----------------------------------------------------------------------


def _connect(ws_url: str, secret: str):
    from websockets.asyncio.client import connect

    # No Origin: a script, which authenticates with its token. proxy=None: loopback only.
    return connect(ws_url, additional_headers={"Authorization": f"Bearer {secret}"}, proxy=None, open_timeout=30)


async def fan_out(ws_url: str, run_id: int, secret: str, clients: int = WS_CLIENTS, batches: int = WS_BATCHES,
                  publish: Callable[[int], Awaitable[None]] | None = None, interval_s: float = 0.05) -> dict[str, Any]:  # fmt: skip
    """Scenario 2: `clients` sockets on run `run_id` of the Daphne at `ws_url`; publishes
    `batches` event batches to the run's group from here, the worker sink's way, or with
    `publish(step)` when given (bench.dashboard_fanout: through runs.telemetry), then waits
    `interval_s`. A batch's latency is from its first event's `sent_at` (or engine
    `wall_time`) to its receipt."""
    from channels.layers import get_channel_layer

    from runs.live import encoded, run_group

    async def to_group(step: int) -> None:
        event = {"kind": "metrics", "step": step, "values": {"reward/mean": step / batches}, "sent_at": time.time()}
        await get_channel_layer().group_send(run_group(run_id), encoded({"type": "run.events", "events": [event]}))

    publish = publish or to_group

    url = f"{ws_url}/ws/runs/{run_id}/"
    sockets = []
    opened = time.perf_counter()
    # Opened 25 at a time: Daphne's listen backlog and one 2-core machine.
    gate = asyncio.Semaphore(25)

    async def open_one():
        async with gate:
            socket = await _connect(url, secret)
            hello = json.loads(await asyncio.wait_for(socket.recv(), 30))
            assert hello["type"] == "hello", hello
            return socket

    sockets = await asyncio.gather(*(open_one() for _ in range(clients)))
    open_s = time.perf_counter() - opened
    latencies: list[float] = []
    received = [0] * clients

    async def listen(index: int, socket) -> None:
        deadline = time.monotonic() + 60
        while received[index] < batches and time.monotonic() < deadline:
            message = json.loads(await asyncio.wait_for(socket.recv(), deadline - time.monotonic()))
            if message["type"] == "events":
                first = message["events"][0]
                latencies.append(time.time() - first.get("sent_at", first.get("wall_time")))
                received[index] += 1

    listeners = [asyncio.ensure_future(listen(index, socket)) for index, socket in enumerate(sockets)]
    published = time.perf_counter()
    for step in range(batches):
        await publish(step)
        await asyncio.sleep(interval_s)
    results = await asyncio.gather(*listeners, return_exceptions=True)
    delivered_s = time.perf_counter() - published
    await asyncio.gather(*(socket.close() for socket in sockets))
    p50, p90, p99 = (quantiles(latencies, n=100)[index] for index in (49, 89, 98)) if len(latencies) > 1 else (0, 0, 0)
    return {
        "clients": clients,
        "batches": batches,
        "expected_deliveries": clients * batches,
        "deliveries": sum(received),
        "clients_with_every_batch": sum(1 for count in received if count == batches),
        "listener_errors": [repr(result) for result in results if isinstance(result, BaseException)][:5],
        "open_s": round(open_s, 2),
        "publish_to_last_delivery_s": round(delivered_s, 2),
        "latency_ms": {"p50": round(p50 * 1000, 1), "p90": round(p90 * 1000, 1), "p99": round(p99 * 1000, 1),
                       "max": round(max(latencies, default=0) * 1000, 1)},
    }  # fmt: skip


# --- 3. revocation mid-stream ------------------------------------------------------------------------


async def revocation(base_url: str, ws_url: str, run_id: int, new_token: Callable[[], tuple[int, str]], manager_secret: str,
                     trials: int = REVOCATION_TRIALS) -> dict[str, Any]:  # fmt: skip
    """Scenario 3: per trial a fresh token (`new_token()` → (id, secret)) streams on the
    run's socket and polls GET /api/me/ every 20 ms; DELETE /api/tokens/<id>/ with the
    manager's token revokes it. Times from sending the DELETE."""
    import httpx

    api_refused: list[float] = []
    socket_closed: list[float] = []
    close_codes: list[int | None] = []
    async with httpx.AsyncClient(base_url=base_url, timeout=10, trust_env=False) as http:
        for _ in range(trials):
            token_id, secret = await asyncio.to_thread(_closing_connection, new_token)
            socket = await _connect(f"{ws_url}/ws/runs/{run_id}/", secret)
            assert json.loads(await socket.recv())["type"] == "hello"
            revoked_at: list[float] = []
            first_401: list[float] = []

            async def poll() -> None:
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    sent = time.perf_counter()
                    response = await http.get("/api/me/", headers={"Authorization": f"Bearer {secret}"})
                    # Only a request sent after the DELETE went out shows the revocation.
                    if response.status_code == 401 and revoked_at and sent >= revoked_at[0]:
                        first_401.append(time.perf_counter())
                        return
                    await asyncio.sleep(0.02)

            async def wait_closed() -> float:
                try:
                    while True:
                        await asyncio.wait_for(socket.recv(), 10)
                except Exception:  # ConnectionClosed: what we wait for; a timeout shows as no close code
                    pass
                return time.perf_counter()

            poller = asyncio.ensure_future(poll())
            closer = asyncio.ensure_future(wait_closed())
            await asyncio.sleep(0.1)  # the poller is under way: the token works until now
            revoked_at.append(time.perf_counter())
            deleted = await http.delete(f"/api/tokens/{token_id}/", headers={"Authorization": f"Bearer {manager_secret}"})
            assert deleted.status_code == 204, deleted.text
            closed = await closer
            await poller
            close_codes.append(socket.close_code)
            socket_closed.append(closed - revoked_at[0])
            api_refused.append(first_401[0] - revoked_at[0] if first_401 else float("inf"))
    return {
        "trials": trials,
        "api_401_after_s": [round(value, 3) for value in api_refused],
        "socket_closed_after_s": [round(value, 3) for value in socket_closed],
        "close_codes": close_codes,
        "worst_s": round(max(api_refused + socket_closed), 3),
    }


def _closing_connection(make: Callable[[], Any]) -> Any:
    """`make()` in a worker thread, whose database connection is closed after it (an open
    one would keep the test database from being dropped)."""
    from django.db import connection

    try:
        return make()
    finally:
        connection.close()


# --- the command ---------------------------------------------------------------------------------------


def _setup_django() -> None:
    sys.path.insert(0, str(REPO_ROOT / "platform"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "rollyard.settings")
    import django

    django.setup()


def dispatch_in_process(enqueued: list[int], set_attribute: Callable[[str, Any], None] | None = None) -> None:
    """No worker takes part: runs handed to workers are only counted, and requested sweeps
    run in the committing thread (as in tests/platform/conftest.py). `set_attribute`
    ("module.name", value) is pytest's monkeypatch.setattr in the tests."""
    from runs.admission import admit_queued_runs

    def set_for_good(target: str, value: Any) -> None:
        module, name = target.rsplit(".", 1)
        setattr(importlib.import_module(module), name, value)

    put = set_attribute or set_for_good
    put("rollyard.dispatch.enqueue_run", enqueued.append)  # list.append is atomic
    put("rollyard.dispatch.request_admission", lambda pool_id=None: admit_queued_runs(pool_id))


def main() -> None:
    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        sys.exit("bench.load measures PostgreSQL under concurrency: set DATABASE_URL=postgres://... and REDIS_URL")
    # Groups and cache keys of this run only: other stacks may share the Redis.
    prefix = f"load-{uuid.uuid4().hex[:8]}"
    os.environ["ROLLYARD_CHANNEL_PREFIX"] = prefix
    _setup_django()
    from django.core.management import call_command

    from accounts.services import create_token, default_team
    from devstack.processes import free_port, stack_env, start_web, stop, wait_for_http
    from devstack.services import VAR_DIR
    from runs.models import Run, RunStatus

    call_command("migrate", verbosity=0)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll otherwise
    enqueued: list[int] = []
    dispatch_in_process(enqueued)
    storm = admission_storm(prefix)

    from django.contrib.auth import get_user_model

    watcher = get_user_model().objects.create_user(f"{prefix}-watcher")
    run = Run.objects.create(owner=watcher, team=default_team(watcher), name=f"{prefix}-live", spec={},
                             status=RunStatus.RUNNING, total_steps=WS_BATCHES)  # fmt: skip
    secret = create_token(watcher, "fan-out")[1]
    manager = create_token(watcher, "manager")[1]

    def new_token() -> tuple[int, str]:
        token, token_secret = create_token(watcher, "revoked mid-stream")
        return token.pk, token_secret

    port = free_port()
    log = VAR_DIR / "bench-load-web.log"
    web = start_web(port, stack_env(), log)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/accounts/login/", web)
        ws_url, base_url = f"ws://127.0.0.1:{port}", f"http://127.0.0.1:{port}"
        fan = asyncio.run(fan_out(ws_url, run.pk, secret))
        revoke = asyncio.run(revocation(base_url, ws_url, run.pk, new_token, manager))
    finally:
        stop(web)

    from bench.record import record

    metrics = {"admission": storm, "fan_out": fan, "revocation": revoke}
    summary = (
        f"{storm['launches']} launches by {storm['users']} users: {storm['over_admissions']} over-admissions, "
        f"{storm['runs_admitted_once']}/{storm['launches']} admitted exactly once ({storm['total_s']} s); "
        f"{fan['clients']} websockets × {fan['batches']} batches: {fan['deliveries']}/{fan['expected_deliveries']} delivered, "
        f"p50 {fan['latency_ms']['p50']} ms, p99 {fan['latency_ms']['p99']} ms; "
        f"revoked token: API 401 after ≤ {max(revoke['api_401_after_s'])} s, socket closed after "
        f"≤ {max(revoke['socket_closed_after_s'])} s ({revoke['trials']} trials); PostgreSQL, Redis, Daphne on loopback"
    )
    result = record("bench.load", metrics, summary)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
