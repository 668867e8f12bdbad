"""Event-to-browser latency with 200 websocket dashboards open on one run.

200 websocket clients (bench.load.fan_out: the `websockets` library, token auth) watch
one run of a live Daphne; 50 steps' events (a Metrics event of 30 metrics and the step's
Heartbeat, as the driver's sink batches them), one every 0.5 s (the sink's longest wait
between two batches), go through the platform's ingest, runs.telemetry.record_events, in
a process of their own as a driver's are: written to PostgreSQL, then published to the
run's group over Redis after commit. Latency per client and batch: from the Metrics event's engine
wall time (stamped just before the write) to its receipt by the client, so it holds the
database write, the commit, the channel layer and Daphne's 200 sends.

    DATABASE_URL=postgres://... REDIS_URL=redis://... .venv/bin/python -m bench.dashboard_fanout

Writes bench/results/dashboard_fanout.json and its line in docs/benchmarks.md.
"""

import asyncio
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor

CLIENTS = 200
STEPS = 50
INTERVAL_S = 0.5  # the sink's longest wait between batches: a run's fastest live pace
METRICS_PER_STEP = 30
AIM_MS = 1000


def write_step(run_id: int, attempt_id: int, step: int) -> float:
    """The driver's batch of one step, stored and published: seconds it took."""
    from engine.events import Heartbeat, Metrics
    from runs.telemetry import record_events

    events = [
        Metrics(step=step + 1, values={f"bench/metric_{i}": step * 0.01 + i for i in range(METRICS_PER_STEP)}, wall_time=time.time()),
        Heartbeat(step=step + 1),
    ]  # fmt: skip
    began = time.perf_counter()
    record_events(run_id, attempt_id, events, batch=step + 1)
    return time.perf_counter() - began


def main() -> None:
    from bench.dashboard_stack import load_average, latency_ms, live_web, start, watched_run

    load_at_start = load_average()
    prefix = start("dashboard_fanout")
    from django.db import connection

    from bench.load import _setup_django, fan_out
    from runs.models import MetricPoint

    run, attempt, secret = watched_run(prefix, total_steps=STEPS)
    connection.close()  # the writer process opens its own
    writes: list[float] = []
    # The driver is a process of its own: its writes don't take the clients' interpreter.
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=_setup_django) as driver:

        async def publish(step: int) -> None:
            loop = asyncio.get_running_loop()
            writes.append(await loop.run_in_executor(driver, write_step, run.pk, attempt.pk, step))

        with live_web("dashboard_fanout") as (_, ws_url):
            fan = asyncio.run(fan_out(ws_url, run.pk, secret, clients=CLIENTS, batches=STEPS, publish=publish,
                                      interval_s=INTERVAL_S))  # fmt: skip

    stored = MetricPoint.objects.filter(run=run).count()
    metrics = {
        **fan,
        "metrics_per_step": METRICS_PER_STEP,
        "points_stored": stored,
        "record_events_ms": latency_ms(writes),
        "aim_p99_ms": AIM_MS,
        "load_average_1m": {"start": load_at_start, "end": load_average()},
        "met": fan["deliveries"] == fan["expected_deliveries"] and fan["latency_ms"]["p99"] < AIM_MS,
    }

    from bench.record import record

    lat = fan["latency_ms"]
    summary = (
        f"{CLIENTS} websocket dashboards on one run, {STEPS} steps (one per {INTERVAL_S} s, {METRICS_PER_STEP} metrics each) "
        f"through record_events in a driver process (PostgreSQL write, publish after commit): {fan['deliveries']}/{fan['expected_deliveries']} delivered, event-to-client "
        f"p50 {lat['p50']} ms, p99 {lat['p99']} ms, max {lat['max']} ms (the write itself p50 "
        f"{metrics['record_events_ms']['p50']} ms); aim p99 < {AIM_MS} ms: {'met' if metrics['met'] else 'missed'}; "
        f"PostgreSQL, Redis, Daphne on loopback"
    )
    print(json.dumps(record("bench.dashboard_fanout", metrics, summary), indent=2))


if __name__ == "__main__":
    main()
