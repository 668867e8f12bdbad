"""Chart buckets (runs.rollups): kept by ingest, right after a replay, read instead of the
points. The series are recorded through runs.telemetry.record_events, as a driver does."""

import math

from django.utils import timezone

from engine.events import Metrics
from runs import rollups, selectors
from runs.models import MetricPoint, MetricRollup, RunAttempt


def wave(step: int) -> float:
    # Deterministic, with one extreme per 256 steps that is not at a bucket's ends.
    return math.sin(step * 0.37) + (step % 256 == 101) * 10 - (step % 256 == 201) * 10


def test_aligned_buckets_are_exactly_m4_of_the_points(alice, make_run, record):
    run = make_run(alice)
    # Steps 0..4095 in 4 batches of 1024: 16 chart buckets of 256 steps each line up with
    # the stored 256-wide buckets, so each must hold exactly the first, last, lowest and
    # highest point of its 256 steps.
    for start in range(0, 4096, 1024):
        record(run.id, [Metrics(step=s, values={"m": wave(s)}, wall_time=float(s)) for s in range(start, start + 1024)])

    steps, walls, values, total = rollups.downsample(run.pk, "m", 0, 4095, buckets=16)

    assert total == 4096
    expected = set()
    for bucket in range(16):
        inside = range(bucket * 256, bucket * 256 + 256)
        low = min(inside, key=lambda s: (wave(s), s))
        high = min(inside, key=lambda s: (-wave(s), s))
        expected |= {(s, float(s), wave(s)) for s in (inside[0], inside[-1], low, high)}
    assert list(zip(steps, walls, values, strict=True)) == sorted(expected)


def test_a_ragged_zoom_keeps_its_extremes_and_nothing_outside(alice, make_run, record):
    run = make_run(alice)
    record(run.id, [Metrics(step=s, values={"m": wave(s)}, wall_time=float(s)) for s in range(1, 5001)])

    # 5..3999: ragged at both ends of every stored width; 10 chart buckets.
    series = selectors.metric_series(run, ["m"], max_points=40, min_step=5, max_step=3999)["m"]

    inside = range(5, 4000)
    assert series["total"] == len(inside)
    assert len(series["steps"]) <= 40
    assert all(5 <= step <= 3999 for step in series["steps"])
    assert series["steps"][0] == 5 and series["steps"][-1] == 3999
    assert max(series["values"]) == max(wave(s) for s in inside)
    assert min(series["values"]) == min(wave(s) for s in inside)


def test_a_replayed_step_is_recounted_not_added(alice, make_run, record):
    run = make_run(alice)
    record(run.id, [Metrics(step=s, values={"m": 1.0}, wall_time=0.0) for s in range(1, 101)])
    record(run.id, [Metrics(step=60, values={"m": 50.0}, wall_time=0.0)])  # a spike...
    RunAttempt.objects.filter(run=run).update(ended_at=timezone.now())
    # ...that a resumed attempt replays from step 50 without: it must leave the buckets.
    record(run.id, [Metrics(step=s, values={"m": 2.0}, wall_time=1.0) for s in range(50, 101)])

    kept = sorted(MetricRollup.objects.filter(run=run).values_list("width", "bucket", "count", "high_value"))
    rollups.rebuild(run, "m")
    rebuilt = sorted(MetricRollup.objects.filter(run=run).values_list("width", "bucket", "count", "high_value"))
    assert kept == rebuilt
    # 16-wide buckets: 3 is steps 48..63, 1.0 at 48-49 then 2.0; 100 points, not 152.
    assert (16, 3, 16, 2.0) in kept
    assert sum(count for width, _, count, _ in kept if width == 65536) == 100


def test_non_finite_points_are_counted_but_never_drawn(alice, make_run, record):
    run = make_run(alice)
    values = [math.nan if 100 <= s < 200 else float(s) for s in range(1, 2001)]
    record(run.id, [Metrics(step=s, values={"m": v}, wall_time=0.0) for s, v in zip(range(1, 2001), values)])

    series = selectors.metric_series(run, ["m"], max_points=100)["m"]

    assert series["total"] == 2000
    assert None not in series["values"]
    assert not any(100 <= step < 200 for step in series["steps"])


def test_a_long_series_is_read_from_buckets_not_points(alice, make_run, record):
    run = make_run(alice)
    record(run.id, [Metrics(step=s, values={"m": wave(s)}, wall_time=0.0) for s in range(0, 8192)])
    # Without its points, a range of whole buckets still charts: 100 chart buckets;
    # 8192 / 256 = 32 < 100 ≤ 512 = 8192 / 16, so the 512 buckets 16 wide are read.
    MetricPoint.objects.filter(run=run).delete()

    series = selectors.metric_series(run, ["m"], max_points=400, min_step=0, max_step=8191)["m"]

    assert series["total"] == 8192
    assert 300 < len(series["steps"]) <= 400
    assert max(series["values"]) == max(wave(s) for s in range(8192))
    assert min(series["values"]) == min(wave(s) for s in range(8192))
