"""A 1,000,000-point metric series served as 1,000 min/max buckets, end to end.

One metric of one run, steps 1..1,000,000, written through the platform's ingest
(runs.telemetry.record_events, 100 batches of 10,000 steps, as a driver would), then 20
GET /api/runs/<id>/metrics/?name=...&max_points=4000 over HTTP to a live Daphne with an
API token: 1,000 M4 buckets (each its first, last, minimum and maximum point), after a
VACUUM ANALYZE (what autovacuum does after such an insert, done before timing). Timed at
the client, from sending the request to the parsed JSON. Also timed: zoomed requests
(a random tenth of the steps, 1,000 buckets), and, for scale, reading the series' points
straight from PostgreSQL (what any downsampler working on the points must do first).

    DATABASE_URL=postgres://... REDIS_URL=redis://... .venv/bin/python -m bench.dashboard_series

Writes bench/results/dashboard_series.json (+ .html: the served series and the latencies).
"""

import json
import random
import time

POINTS = 1_000_000
BATCH = 10_000
BUCKETS = 1_000
REQUESTS = 20
NAME = "actor/grad_norm"
AIM_MS = 100


def value_at(step: int, noise: random.Random) -> float:
    # A slow trend, noise, and a spike every 100,000 steps that a chart must not lose.
    return 1 / (1 + step / 200_000) + noise.gauss(0, 0.05) + (step % 100_000 == 31_337) * 5


def main() -> None:
    from bench.dashboard_stack import load_average, latency_ms, live_web, start, watched_run, write_plot

    load_at_start = load_average()
    prefix = start("dashboard_series")
    import httpx

    from django.db import connection

    from engine.events import Metrics
    from runs.models import MetricPoint
    from runs.telemetry import record_events

    run, attempt, secret = watched_run(prefix, total_steps=POINTS)
    noise = random.Random(0)
    ingest_started = time.perf_counter()
    for start_step in range(1, POINTS + 1, BATCH):
        events = [Metrics(step=s, values={NAME: value_at(s, noise)}, wall_time=1.7e9 + s)
                  for s in range(start_step, start_step + BATCH)]  # fmt: skip
        record_events(run.pk, attempt.pk, events, batch=start_step // BATCH + 1)
    ingest_s = time.perf_counter() - ingest_started
    stored = MetricPoint.objects.filter(run=run, name=NAME).count()
    # What autovacuum does after a million inserts, done before timing rather than during.
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")

    # For scale: every point read from PostgreSQL, as a downsampler of the points must.
    read_all = []
    for _ in range(3):
        began = time.perf_counter()
        rows = list(MetricPoint.objects.filter(run=run, name=NAME).order_by("step").values_list("step", "wall_time", "value"))
        read_all.append(time.perf_counter() - began)
    assert len(rows) == POINTS

    headers = {"Authorization": f"Bearer {secret}"}
    whole, zoomed, served = [], [], {}
    zoom = random.Random(1)
    with live_web("dashboard_series") as (base_url, _), httpx.Client(base_url=base_url, headers=headers, trust_env=False, timeout=30) as http:
        url = f"/api/runs/{run.pk}/metrics/"
        http.get(url, params={"name": NAME, "max_points": 4 * BUCKETS}).raise_for_status()  # warm: imports, connection
        for _ in range(REQUESTS):
            began = time.perf_counter()
            response = http.get(url, params={"name": NAME, "max_points": 4 * BUCKETS})
            response.raise_for_status()
            served = response.json()["series"][NAME]
            whole.append(time.perf_counter() - began)
        for _ in range(REQUESTS):
            lo = zoom.randrange(1, POINTS - POINTS // 10)
            params = {"name": NAME, "max_points": 4 * BUCKETS, "min_step": lo, "max_step": lo + POINTS // 10 - 1}
            began = time.perf_counter()
            response = http.get(url, params=params)
            response.raise_for_status()
            response.json()
            zoomed.append(time.perf_counter() - began)

    spikes = [step for step in range(1, POINTS + 1) if step % 100_000 == 31_337]
    metrics = {
        "points_stored": stored,
        "ingest_s": round(ingest_s, 1),
        "buckets_asked": BUCKETS,
        "max_points": 4 * BUCKETS,
        "points_served": len(served["steps"]),
        "total_reported": served["total"],
        "spikes_kept": sum(1 for step in spikes if step in set(served["steps"])),
        "spikes": len(spikes),
        "response_bytes": len(response.content),
        "whole_series_ms": latency_ms(whole),
        "zoomed_tenth_ms": latency_ms(zoomed),
        "read_every_point_from_postgres_ms": latency_ms(read_all),
        "aim_ms": AIM_MS,
        "load_average_1m": {"start": load_at_start, "end": load_average()},
        # The aim is the whole series; zoomed requests are shown beside it.
        "met": latency_ms(whole)["p99"] < AIM_MS,
    }
    plot(served, whole, zoomed, write_plot)

    from bench.record import record

    w, z = metrics["whole_series_ms"], metrics["zoomed_tenth_ms"]
    summary = (
        f"{POINTS:,}-point series → {BUCKETS:,} M4 buckets ({metrics['points_served']} points, "
        f"{metrics['spikes_kept']}/{metrics['spikes']} spikes kept) over HTTP: p50 {w['p50']} ms, p99 {w['p99']} ms "
        f"({REQUESTS} requests; zoomed to a tenth p99 {z['p99']} ms); reading its points alone takes "
        f"{metrics['read_every_point_from_postgres_ms']['p50']} ms; aim p99 < {AIM_MS} ms: "
        f"{'met' if metrics['met'] else 'missed'}; PostgreSQL, Daphne on loopback"
    )
    print(json.dumps(record("bench.dashboard_series", metrics, summary), indent=2))


def plot(served: dict, whole: list[float], zoomed: list[float], write_plot) -> None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    figure = make_subplots(rows=2, cols=1, subplot_titles=(
        f"{NAME}: {POINTS:,} points as served ({len(served['steps'])} points, {BUCKETS} M4 buckets)",
        "Request latency, end to end (ms)"))  # fmt: skip
    figure.add_trace(go.Scattergl(x=served["steps"], y=served["values"], mode="lines", name="served"), row=1, col=1)
    figure.add_trace(go.Scatter(y=[s * 1000 for s in whole], mode="markers+lines", name="whole series"), row=2, col=1)
    figure.add_trace(go.Scatter(y=[s * 1000 for s in zoomed], mode="markers+lines", name="zoomed to a tenth"), row=2, col=1)
    figure.add_hline(y=AIM_MS, line_dash="dash", annotation_text="aim", row=2, col=1)
    figure.update_xaxes(title_text="step", row=1, col=1)
    figure.update_xaxes(title_text="request", row=2, col=1)
    figure.update_yaxes(title_text="ms", row=2, col=1)
    figure.update_layout(height=800, width=1100)
    write_plot("dashboard_series", figure)


if __name__ == "__main__":
    main()
