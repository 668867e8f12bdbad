"""Event-to-browser latency with 200 websocket dashboards open on one run.

200 websocket clients (bench.load.fan_out: the `websockets` library, token auth) watch
one run of a live Daphne; 50 steps' events (a Metrics event of 30 metrics and the step's
Heartbeat, as the driver's sink batches them) go through the platform's ingest,
runs.telemetry.record_events: written to PostgreSQL, then published to the run's group
over Redis after commit. Latency per client and batch: from the Metrics event's engine
wall time (stamped just before the write) to its receipt by the client, so it holds the
database write, the commit, the channel layer and Daphne's 200 sends.

    DATABASE_URL=postgres://... REDIS_URL=redis://... .venv/bin/python -m bench.dashboard_fanout

Writes bench/results/dashboard_fanout.json and its line in docs/benchmarks.md.
"""

import asyncio
import json
import time

CLIENTS = 200
STEPS = 50
METRICS_PER_STEP = 30
AIM_MS = 1000


def main() -> None:
    from bench.dashboard_stack import latency_ms, live_web, start, watched_run

    prefix = start("dashboard_fanout")
    from bench.load import fan_out
    from engine.events import Heartbeat, Metrics
    from runs.models import MetricPoint
    from runs.telemetry import record_events

    run, attempt, secret = watched_run(prefix, total_steps=STEPS)
    writes: list[float] = []

    def write_step(step: int) -> None:
        events = [
            Metrics(step=step + 1, values={f"bench/metric_{i}": step * 0.01 + i for i in range(METRICS_PER_STEP)}, wall_time=time.time()),
            Heartbeat(step=step + 1),
        ]  # fmt: skip
        began = time.perf_counter()
        record_events(run.pk, attempt.pk, events, batch=step + 1)
        writes.append(time.perf_counter() - began)

    async def publish(step: int) -> None:
        await asyncio.to_thread(write_step, step)

    with live_web("dashboard_fanout") as (_, ws_url):
        fan = asyncio.run(fan_out(ws_url, run.pk, secret, clients=CLIENTS, batches=STEPS, publish=publish))

    stored = MetricPoint.objects.filter(run=run).count()
    metrics = {
        **fan,
        "metrics_per_step": METRICS_PER_STEP,
        "points_stored": stored,
        "record_events_ms": latency_ms(writes),
        "aim_p99_ms": AIM_MS,
        "met": fan["deliveries"] == fan["expected_deliveries"] and fan["latency_ms"]["p99"] < AIM_MS,
    }

    from bench.record import record

    lat = fan["latency_ms"]
    summary = (
        f"{CLIENTS} websocket dashboards on one run, {STEPS} steps through record_events (PostgreSQL write, "
        f"publish after commit): {fan['deliveries']}/{fan['expected_deliveries']} delivered, event-to-client "
        f"p50 {lat['p50']} ms, p99 {lat['p99']} ms, max {lat['max']} ms (the write itself p50 "
        f"{metrics['record_events_ms']['p50']} ms); aim p99 < {AIM_MS} ms: {'met' if metrics['met'] else 'missed'}; "
        f"PostgreSQL, Redis, Daphne on loopback"
    )
    print(json.dumps(record("bench.dashboard_fanout", metrics, summary), indent=2))


if __name__ == "__main__":
    main()
