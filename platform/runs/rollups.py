"""Pre-aggregated metric series: what lets a chart of a million points come back in a few
milliseconds. The one downsampling path of the platform (runs.selectors.metric_series).

Every metric of a run is kept twice: its points (MetricPoint) and, at each of WIDTHS, one
MetricRollup row per bucket of `width` consecutive steps with the bucket's point count and
its first, last, lowest and highest finite point (the four M4 keeps). Buckets merge:
a wider bucket, or a chart's bucket, is the merge of the narrower buckets it covers, so
a chart over any step range reads at most about WIDTHS[i+1]/WIDTHS[i] = 16 rows per chart
bucket, never the points.

Written only by runs.telemetry.record_events, inside its transaction and under the run's
row lock (no other writer of the run's rows can interleave a read-modify-write).
"""

from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

from django.db.models import Q

from runs.models import MetricPoint, MetricRollup, Run

# Each width 16 times the last: a chart reads at most 16 stored buckets per chart bucket.
WIDTHS = (16, 256, 4096, 65536)

Point = tuple[int, float, float]  # (step, wall_time, value), value finite


class Summary(NamedTuple):
    """A bucket: points counted (non-finite ones too) and its M4 points (None when it
    holds no finite value)."""

    count: int
    first: Point | None
    last: Point | None
    low: Point | None
    high: Point | None


def of_point(step: int, wall_time: float, value: float | None) -> Summary:
    point = None if value is None else (step, wall_time, value)
    return Summary(1, point, point, point, point)


def merge(a: Summary, b: Summary) -> Summary:
    """One bucket of two. Ties go to the earlier step, so merging is order-free."""
    if a.first is None:
        return Summary(a.count + b.count, b.first, b.last, b.low, b.high)
    if b.first is None:
        return Summary(a.count + b.count, a.first, a.last, a.low, a.high)
    return Summary(
        a.count + b.count,
        a.first if a.first[0] <= b.first[0] else b.first,
        a.last if a.last[0] >= b.last[0] else b.last,
        min(a.low, b.low, key=lambda p: (p[2], p[0])),
        min(a.high, b.high, key=lambda p: (-p[2], p[0])),
    )


def merge_all(summaries: Iterable[Summary]) -> Summary:
    total = Summary(0, None, None, None, None)
    for summary in summaries:
        total = merge(total, summary)
    return total


# --- stored rows ----------------------------------------------------------------------------

_POINT_FIELDS = [f"{which}_{part}" for which in ("first", "last", "low", "high") for part in ("step", "wall", "value")]
_ROW_FIELDS = ["count", *_POINT_FIELDS]


def _summary_of_row(row: Sequence) -> Summary:
    """`row`: count, then step, wall, value of first, last, low and high (values_list order)."""
    if row[1] is None:
        return Summary(row[0], None, None, None, None)
    return Summary(row[0], tuple(row[1:4]), tuple(row[4:7]), tuple(row[7:10]), tuple(row[10:13]))


def _row_values(summary: Summary) -> dict:
    values = {"count": summary.count}
    for which in ("first", "last", "low", "high"):
        point = getattr(summary, which)
        for part, value in zip(("step", "wall", "value"), point or (None, None, None), strict=True):
            values[f"{which}_{part}"] = value
    return values


def _save(run: Run, name: str, width: int, buckets: dict[int, Summary]) -> None:
    MetricRollup.objects.bulk_create(
        (MetricRollup(run=run, name=name, width=width, bucket=bucket, **_row_values(s)) for bucket, s in buckets.items()),
        batch_size=1000,
        update_conflicts=True,
        unique_fields=["run", "name", "width", "bucket"],
        update_fields=_ROW_FIELDS,
    )


def _stored(run_id: int, keys: dict[tuple[str, int], set[int]]) -> dict[tuple[str, int, int], Summary]:
    """The stored buckets of `keys` ((name, width) → buckets), one query."""
    if not keys:
        return {}
    wanted = Q()
    for (name, width), buckets in keys.items():
        wanted |= Q(name=name, width=width, bucket__in=sorted(buckets))
    rows = MetricRollup.objects.filter(wanted, run_id=run_id).values_list("name", "width", "bucket", *_ROW_FIELDS)
    return {(row[0], row[1], row[2]): _summary_of_row(row[3:]) for row in rows}


# --- ingest -----------------------------------------------------------------------------------------


def add_points(run: Run, points: Sequence[MetricPoint], replaced: set[tuple[str, int]]) -> None:
    """Fold a batch's points, stored already, into the run's buckets. `replaced`: the
    (name, step)s among them that overwrote a stored point (a resumed attempt replaying a
    step); then the buckets the batch touched are recounted from what they cover instead,
    the narrowest from the points, each wider one from the one below."""
    if replaced:
        # Rare (a resume): every bucket the batch touched, recounted with its new points.
        touched = {(point.name, point.step) for point in points}
        _recount(run, {name for name, _ in touched}, touched)
        return
    fresh: dict[tuple[str, int], dict[int, Summary]] = defaultdict(dict)
    for point in points:
        summary = of_point(point.step, point.wall_time, point.value)
        for width in WIDTHS:
            buckets = fresh[point.name, width]
            bucket = point.step // width
            buckets[bucket] = merge(buckets[bucket], summary) if bucket in buckets else summary
    stored = _stored(run.pk, {key: set(buckets) for key, buckets in fresh.items()})
    for (name, width), buckets in fresh.items():
        for bucket, summary in buckets.items():
            if (name, width, bucket) in stored:
                buckets[bucket] = merge(stored[name, width, bucket], summary)
        _save(run, name, width, buckets)


def _recount(run: Run, names: set[str], steps: set[tuple[str, int]]) -> None:
    for index, width in enumerate(WIDTHS):
        for name in names:
            buckets = {step // width for point_name, step in steps if point_name == name}
            counted = {}
            for bucket in buckets:
                lo, hi = bucket * width, (bucket + 1) * width - 1
                below = _raw(run.pk, name, lo, hi) if index == 0 else _rows(run.pk, name, WIDTHS[index - 1], lo, hi)
                counted[bucket] = merge_all(summary for _, summary in below)
            _save(run, name, width, counted)


def rebuild(run: Run, name: str) -> None:
    """Every bucket of one metric, from its points (a backfill; ingest keeps them after)."""
    MetricRollup.objects.filter(run=run, name=name).delete()
    below = list(_raw(run.pk, name, None, None))
    for width in WIDTHS:
        buckets: dict[int, Summary] = {}
        for step, summary in below:
            bucket = step // width
            buckets[bucket] = merge(buckets[bucket], summary) if bucket in buckets else summary
        _save(run, name, width, buckets)
        below = [(bucket * width, summary) for bucket, summary in sorted(buckets.items())]


# --- reads ----------------------------------------------------------------------------------------------


def _raw(run_id: int, name: str, lo: int | None, hi: int | None) -> Iterator[tuple[int, Summary]]:
    points = MetricPoint.objects.filter(run_id=run_id, name=name)
    if lo is not None:
        points = points.filter(step__gte=lo)
    if hi is not None:
        points = points.filter(step__lte=hi)
    for step, wall, value in points.order_by("step").values_list("step", "wall_time", "value"):
        yield step, of_point(step, wall, value)


def _rows(run_id: int, name: str, width: int, lo: int, hi: int) -> Iterator[tuple[int, Summary]]:
    """Stored buckets of `width` inside steps lo..hi, whole ones only: (first step, bucket)."""
    first, last = -(-lo // width), (hi + 1) // width - 1
    if first > last:
        return
    rows = MetricRollup.objects.filter(run_id=run_id, name=name, width=width, bucket__gte=first, bucket__lte=last)
    for row in rows.order_by("bucket").values_list("bucket", *_ROW_FIELDS):
        yield row[0] * width, _summary_of_row(row[1:])


def covering(run_id: int, name: str, lo: int, hi: int, width_index: int) -> Iterator[tuple[int, Summary]]:
    """Steps lo..hi as the fewest pieces: whole buckets of WIDTHS[width_index], the ragged
    ends from narrower ones, down to the points. Yields (first step, summary) in step order."""
    if width_index < 0:
        yield from _raw(run_id, name, lo, hi)
        return
    width = WIDTHS[width_index]
    first, last = -(-lo // width) * width, ((hi + 1) // width) * width - 1
    if first > last:  # no whole bucket inside
        yield from covering(run_id, name, lo, hi, width_index - 1)
        return
    if lo < first:
        yield from covering(run_id, name, lo, first - 1, width_index - 1)
    yield from _rows(run_id, name, width, lo, hi)
    if last < hi:
        yield from covering(run_id, name, last + 1, hi, width_index - 1)


def downsample(run_id: int, name: str, lo: int, hi: int, buckets: int) -> tuple[list[Point], int]:
    """Steps lo..hi cut into `buckets` equal ranges, each giving its first, last, lowest and
    highest finite point (fewer when they coincide), in step order; and the points counted.

    Reads the widest stored buckets of which the range holds at least `buckets`, so each
    chart bucket is built from whole stored ones (a stored bucket goes to the chart bucket
    its first step falls in: off by less than one stored width at a chart bucket's edge)."""
    span = hi - lo + 1
    width_index = max((i for i, width in enumerate(WIDTHS) if span // width >= buckets), default=-1)
    out: dict[int, Summary] = {}
    for start, summary in covering(run_id, name, lo, hi, width_index):
        at = (start - lo) * buckets // span
        out[at] = merge(out[at], summary) if at in out else summary
    kept: set[Point] = set()
    for summary in out.values():
        if summary.first is not None:
            kept.update((summary.first, summary.last, summary.low, summary.high))
    return sorted(kept), sum(summary.count for summary in out.values())
