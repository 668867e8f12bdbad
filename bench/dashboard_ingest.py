"""Ingest: engine events written in batches to PostgreSQL and published, sustained.

4 runs report at once for 60 s, each from its own thread through the driver's own path:
a workers.sink.DatabaseSink behind a workers.attempt.AttemptFence, so every batch is one
runs.telemetry.record_events transaction (fenced, numbered, points upserted, chart
buckets kept, summary refreshed) and one channel-layer message after commit. Each run's
engine offers Metrics events of 50 metrics at a steady 6,250 points per second (25,000
offered in all, above the 20,000 aimed at); the sink batches them as it does any event
stream, by its 0.5 s delay or its 500 events, whichever comes first (no Heartbeat per
step: steps this fast would each be a batch of their own). A slower platform shows as a
lower rate: emit blocks while the sink writes.

Counted after: points stored per run (must equal points emitted) and events heard on the
runs' channel-layer groups by a subscriber listening all along (must equal events emitted).

    DATABASE_URL=postgres://... REDIS_URL=redis://... .venv/bin/python -m bench.dashboard_ingest

Writes bench/results/dashboard_ingest.json (+ .html: points stored per second).
"""

import asyncio
import json
import os
import threading
import time

RUNS = 4
METRICS_PER_EVENT = 50
OFFERED_PER_RUN = 6_250  # points per second
DURATION_S = 60
AIM_PER_S = 20_000


def main() -> None:
    from bench.dashboard_stack import load_average, start, watched_run, write_plot

    load_at_start = load_average()
    prefix = start("dashboard_ingest")
    from channels.layers import get_channel_layer
    from django.db import connection

    from engine.events import Metrics
    from runs.live import run_group
    from runs.models import MetricPoint
    from workers.attempt import AttemptFence
    from workers.sink import DatabaseSink

    runs = [watched_run(f"{prefix}-{index}") for index in range(RUNS)]
    heard = {run.pk: 0 for run, _, _ in runs}
    listening = threading.Event()
    loop = asyncio.new_event_loop()

    async def listen() -> None:
        # A channel per run, as a watching socket has: the events carry no run id. Never
        # a timeout on receive: a receive cancelled mid-pop may lose its message.
        layer = get_channel_layer()
        channels = {}
        for run, _, _ in runs:
            channels[run.pk] = await layer.new_channel()
            await layer.group_add(run_group(run.pk), channels[run.pk])
        listening.set()

        async def count(run_id: int) -> None:
            while True:
                message = await layer.receive(channels[run_id])
                heard[run_id] += len(json.loads(message["text"])["events"])  # runs.live.encoded

        await asyncio.gather(*(count(run_id) for run_id in channels))

    listener_task = loop.create_task(listen())
    listener = threading.Thread(target=lambda: loop.run_until_complete(asyncio.wait([listener_task])))
    listener.start()
    listening.wait(30)

    emitted = {run.pk: 0 for run, _, _ in runs}
    written = {run.pk: 0 for run, _, _ in runs}
    written_at: list[tuple[float, int]] = []  # (seconds since start, points written by then, all runs)
    errors: list[str] = []
    lock = threading.Lock()
    started = time.perf_counter()

    def report(run, attempt) -> None:
        sink = DatabaseSink(AttemptFence(run.pk, attempt.pk, outage_s=30))
        interval = METRICS_PER_EVENT / OFFERED_PER_RUN
        step = 0
        try:
            while time.perf_counter() - started < DURATION_S:
                values = {f"bench/metric_{i}": step * 1e-3 + i for i in range(METRICS_PER_EVENT)}
                batches_before = sink._batches  # the sink's count of batches written
                sink.emit(Metrics(step=step + 1, values=values))
                step += 1
                emitted[run.pk] += METRICS_PER_EVENT
                if sink._batches != batches_before:  # this emit wrote the buffer, itself included
                    with lock:
                        written[run.pk] = emitted[run.pk]
                        written_at.append((time.perf_counter() - started, sum(written.values())))
                ahead = step * interval - (time.perf_counter() - started)
                if ahead > 0:
                    time.sleep(ahead)
            sink.flush()
            with lock:
                written[run.pk] = emitted[run.pk]
                written_at.append((time.perf_counter() - started, sum(written.values())))
        except Exception as exc:  # reported: the benchmark fails on any
            errors.append(repr(exc))
        finally:
            connection.close()

    threads = [threading.Thread(target=report, args=(run, attempt)) for run, attempt, _ in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    deadline = time.monotonic() + 10
    while sum(heard.values()) < sum(emitted.values()) // METRICS_PER_EVENT and time.monotonic() < deadline:
        time.sleep(0.1)
    loop.call_soon_threadsafe(listener_task.cancel)
    listener.join()

    stored = {run.pk: MetricPoint.objects.filter(run=run).count() for run, _, _ in runs}
    total = sum(emitted.values())
    windows = _per_window(written_at, elapsed)
    metrics = {
        "runs": RUNS,
        "metrics_per_event": METRICS_PER_EVENT,
        "offered_points_per_s": OFFERED_PER_RUN * RUNS,
        "duration_s": round(elapsed, 1),
        "points_emitted": total,
        "points_stored": sum(stored.values()),
        "points_missing": total - sum(stored.values()),
        "events_emitted": total // METRICS_PER_EVENT,
        "events_published_and_heard": sum(heard.values()),
        "points_per_s": round(total / elapsed),
        "slowest_10s_window_points_per_s": min(windows) if windows else 0,
        "per_10s_window_points_per_s": windows,
        "errors": errors,
        "cpu_count": os.cpu_count(),
        "aim_points_per_s": AIM_PER_S,
        "load_average_1m": {"start": load_at_start, "end": load_average()},
    }
    # Sustained: the rate over the whole 60 s (the engines catch up after a slow spell: each
    # offers its points on a schedule, not after a pause); the slowest 10 s is shown too.
    metrics["met"] = (
        not errors
        and metrics["points_missing"] == 0
        and metrics["events_published_and_heard"] == metrics["events_emitted"]
        and metrics["points_per_s"] >= AIM_PER_S
    )
    plot(written_at, write_plot)

    from bench.record import record

    summary = (
        f"{RUNS} runs × Metrics of {METRICS_PER_EVENT} through DatabaseSink → record_events for {DURATION_S} s: "
        f"{metrics['points_per_s']:,} points/s (slowest 10 s {metrics['slowest_10s_window_points_per_s']:,}/s; "
        f"{metrics['offered_points_per_s']:,}/s offered), {metrics['points_stored']:,}/{total:,} points stored, "
        f"{metrics['events_published_and_heard']:,}/{metrics['events_emitted']:,} events published and heard; "
        f"aim ≥ {AIM_PER_S:,}/s, nothing dropped: {'met' if metrics['met'] else 'missed'}; PostgreSQL, Redis on loopback"
    )
    print(json.dumps(record("bench.dashboard_ingest", metrics, summary), indent=2))


def _per_window(written_at: list[tuple[float, int]], elapsed: float, window_s: float = 10) -> list[int]:
    """Points written per second in each whole window of `window_s`, from the running
    total at each batch written."""
    rates = []
    edge = window_s
    while edge <= elapsed:
        before = max((points for at, points in written_at if at <= edge - window_s), default=0)
        by = max((points for at, points in written_at if at <= edge), default=0)
        rates.append(round((by - before) / window_s))
        edge += window_s
    return rates


def plot(written_at: list[tuple[float, int]], write_plot) -> None:
    import plotly.graph_objects as go

    ordered = sorted(written_at)
    figure = go.Figure(go.Scatter(x=[at for at, _ in ordered], y=[points for _, points in ordered], mode="lines"))
    figure.update_layout(title=f"Points written, {RUNS} runs through the driver's sink (aim: {AIM_PER_S:,}/s)",
                         xaxis_title="seconds", yaxis_title="points written", width=1000, height=500)  # fmt: skip
    figure.add_scatter(x=[0, DURATION_S], y=[0, AIM_PER_S * DURATION_S], mode="lines", line_dash="dash", name="aim")
    write_plot("dashboard_ingest", figure)


if __name__ == "__main__":
    main()
