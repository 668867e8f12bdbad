"""Pre-aggregated metric series: what lets a chart of a million points be drawn from a few
thousand rows. The one downsampling path of the platform (runs.selectors.metric_series).

Every metric of a run is kept twice: its points (MetricPoint) and, at each of WIDTHS, one
MetricRollup row per bucket of `width` consecutive steps with the bucket's point count and
its first, last, lowest and highest finite point (the four M4 keeps). Buckets merge: a
wider bucket, or a chart's bucket, is the merge of the narrower buckets it covers, so a
chart over any step range reads at most about 16 stored rows per chart bucket (each width
is 16 times the one below), never the points of a long range.

Buckets travel as rows of a float array, one bucket a row (a point is a bucket of one):
START (its first step, what it is grouped by), COUNT, then step, wall time and value of
its first, last, lowest and highest finite point, NaN where it holds no finite value.
`merge` is the one way they combine: ingest, backfill and charts.

Written only by runs.telemetry.record_events (and rebuilt by a fork's copy in runs.launch
and the backfill of migration 0008), inside their transaction and, for ingest, under the
run's row lock, so a read-modify-write cannot interleave.
"""

from collections.abc import Mapping, Sequence

import numpy as np
from django.db import connection
from django.db.models import Q

from runs.models import MetricPoint, MetricRollup, Run

WIDTHS = (16, 256, 4096, 65536)

START, COUNT = 0, 1
FIRST, LAST, LOW, HIGH = 2, 5, 8, 11  # each: step, wall time, value
COLUMNS = 14
_ROW_FIELDS = ["count"] + [f"{which}_{part}" for which in ("first", "last", "low", "high") for part in ("step", "wall", "value")]


def of_points(steps: np.ndarray, walls: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Points as one-point buckets; a NaN value (not finite, stored as null) is counted only."""
    rows = np.empty((len(steps), COLUMNS))
    rows[:, START], rows[:, COUNT] = steps, 1
    point = np.column_stack([steps, walls, values]).astype(np.float64)
    point[np.isnan(point[:, 2])] = np.nan
    for at in (FIRST, LAST, LOW, HIGH):
        rows[:, at : at + 3] = point
    return rows


def merge(rows: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Buckets `rows` merged by `groups` (an int per row): the sorted distinct groups and one
    merged bucket per group (COUNT onwards; START is the caller's). Ties go to the earlier
    step, so the result does not depend on the rows' order."""
    keys, index = np.unique(groups, return_inverse=True)
    merged = np.full((len(keys), COLUMNS - 1), np.nan)
    merged[:, 0] = np.bincount(index, weights=rows[:, COUNT], minlength=len(keys))
    finite = ~np.isnan(rows[:, FIRST + 2])
    kept, kept_index = rows[finite], index[finite]
    for at, primary, secondary in (
        (FIRST, kept[:, FIRST], kept[:, FIRST]),
        (LAST, -kept[:, LAST], kept[:, LAST]),
        (LOW, kept[:, LOW + 2], kept[:, LOW]),
        (HIGH, -kept[:, HIGH + 2], kept[:, HIGH]),
    ):
        order = np.lexsort((secondary, primary, kept_index))  # by group, then primary, secondary
        grouped = kept_index[order]
        heads = order[np.r_[True, grouped[1:] != grouped[:-1]]] if len(order) else order
        merged[kept_index[heads], at - 1 : at + 2] = kept[heads, at : at + 3]
    return keys, merged


def _as_buckets(width: int, buckets: np.ndarray, merged: np.ndarray) -> np.ndarray:
    return np.column_stack([buckets * width, merged])


# --- stored rows ----------------------------------------------------------------------------


# Raw SQL for the reads: the pieces of a chart's range go to the database as one UNION ALL
# (one round trip, not one per piece), and Django's per-row conversions would cost more
# than the query for thousands of rows. Same column order for points and buckets.
_POINTS_SQL = (
    "SELECT step, 1" + ", step, wall_time, value" * 4
    + f" FROM {MetricPoint._meta.db_table} WHERE run_id = %s AND name = %s AND step >= %s AND step <= %s"
)  # fmt: skip
_STORED_SQL = (
    "SELECT bucket * %s, " + ", ".join(_ROW_FIELDS)
    + f" FROM {MetricRollup._meta.db_table} WHERE run_id = %s AND name = %s AND width = %s AND bucket >= %s AND bucket <= %s"
)  # fmt: skip

Piece = tuple[str, list]


def _points_sql(run_id: int, name: str, lo: int, hi: int) -> Piece:
    return _POINTS_SQL, [run_id, name, lo, hi]


def _stored_sql(run_id: int, name: str, width: int, first: int, last: int) -> Piece:
    """Stored buckets first..last of `width`."""
    return _STORED_SQL, [width, run_id, name, width, first, last]


def _fetch(pieces: Sequence[Piece]) -> np.ndarray:
    """The pieces' rows as bucket rows (null → NaN), in one query. On PostgreSQL in binary
    (thousands of rows of 14 numbers: parsing their text costs more than the query), on
    the connection of Django's, so in its transaction."""
    sql, params = " UNION ALL ".join(sql for sql, _ in pieces), [p for _, params in pieces for p in params]
    if connection.vendor == "postgresql":
        import psycopg

        connection.ensure_connection()
        with psycopg.Cursor(connection.connection) as cursor:
            cursor.execute(sql, params, binary=True)
            fetched = cursor.fetchall()
    else:
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            fetched = cursor.fetchall()
    rows = np.array(fetched, dtype=np.float64).reshape(-1, COLUMNS)
    rows[np.isnan(rows[:, FIRST + 2]), FIRST:] = np.nan  # a point not finite: counted only
    return rows


def _points(run_id: int, name: str, lo: int, hi: int) -> np.ndarray:
    return _fetch([_points_sql(run_id, name, lo, hi)])


def _stored(run_id: int, name: str, width: int, first: int, last: int) -> np.ndarray:
    return _fetch([_stored_sql(run_id, name, width, first, last)])


def _save(run: Run, names: Sequence[str], widths: Sequence[int], buckets: Sequence[int], merged: np.ndarray) -> None:
    """Upsert bucket `buckets[i]` of width `widths[i]` of metric `names[i]` as `merged[i]`,
    in one statement (per 1,000 rows)."""

    def row(name: str, width: int, bucket: int, values: list[float]) -> MetricRollup:
        fields = {field: (None if v != v else v) for field, v in zip(_ROW_FIELDS, values, strict=True)}  # NaN → null
        for step in ("count", "first_step", "last_step", "low_step", "high_step"):
            fields[step] = None if fields[step] is None else int(fields[step])
        return MetricRollup(run=run, name=name, width=width, bucket=bucket, **fields)

    MetricRollup.objects.bulk_create(
        [row(*labels, values) for *labels, values in zip(names, widths, buckets, merged.tolist(), strict=True)],
        batch_size=1000,
        update_conflicts=True,
        unique_fields=["run", "name", "width", "bucket"],
        update_fields=_ROW_FIELDS,
    )


# --- ingest -----------------------------------------------------------------------------------------

# Grouping key of (metric, bucket) across a batch's metrics: the metric's index above the
# bucket's bits (steps, so buckets, are 32-bit integers).
_NAME_SHIFT, _BUCKET_OFFSET = 2**33, 2**32


def add_points(run: Run, points: Mapping[tuple[str, int], tuple[float, float | None]], replaced: bool) -> None:
    """Fold a batch's points ((name, step) → (wall time, value)), stored already, into the
    run's buckets: one read of the stored buckets the batch touches and one upsert. `replaced`: some overwrote a stored point (a resumed attempt replaying steps);
    then the buckets the batch touched are recounted from what they cover instead."""
    if not points:
        return
    names = sorted({name for name, _ in points})
    if replaced:
        for name in names:
            _recount(run, name, np.array([step for point_name, step in points if point_name == name], dtype=np.int64))
        return
    index_of = {name: index for index, name in enumerate(names)}
    label = np.array([index_of[name] for name, _ in points], dtype=np.int64) * _NAME_SHIFT + _BUCKET_OFFSET
    steps = np.fromiter((step for _, step in points), dtype=np.int64, count=len(points))
    walls, values = zip(*points.values(), strict=True)
    new = of_points(steps, walls, [np.nan if value is None else value for value in values])
    # The stored buckets the batch touches, every width in one read (a superset: each
    # width's bucket range for every metric of the batch).
    wanted = Q()
    for width in WIDTHS:
        wanted |= Q(width=width, bucket__gte=int(steps.min()) // width, bucket__lte=int(steps.max()) // width)
    stored = MetricRollup.objects.filter(wanted, run=run, name__in=names)
    sql, params = stored.values_list("name", "width", "bucket", *_ROW_FIELDS).query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        fetched = cursor.fetchall()
    old_widths = np.array([row[1] for row in fetched], dtype=np.int64)
    old = np.array([row[2:] for row in fetched], dtype=np.float64).reshape(-1, COLUMNS)
    old_keys = np.array([index_of[row[0]] for row in fetched], dtype=np.int64) * _NAME_SHIFT + _BUCKET_OFFSET
    old_keys += old[:, START].astype(np.int64)  # the bucket number, here
    saved: tuple[list, list, list, list] = ([], [], [], [])
    for width in WIDTHS:
        keys = label + steps // width
        touched = (old_widths == width) & np.isin(old_keys, keys)
        merged_keys, merged = merge(np.concatenate([old[touched], new]), np.concatenate([old_keys[touched], keys]))
        saved[0].extend(names[k] for k in (merged_keys // _NAME_SHIFT).tolist())
        saved[1].extend([width] * len(merged_keys))
        saved[2].extend((merged_keys % _NAME_SHIFT - _BUCKET_OFFSET).tolist())
        saved[3].append(merged)
    _save(run, *saved[:3], np.concatenate(saved[3]))


def _recount(run: Run, name: str, steps: np.ndarray) -> None:
    """The buckets holding `steps` at every width, the narrowest from the points, each
    wider one from the one below."""
    for index, width in enumerate(WIDTHS):
        buckets = np.unique(steps // width)
        lo, hi = int(buckets.min()) * width, (int(buckets.max()) + 1) * width - 1
        if index == 0:
            below = _points(run.pk, name, lo, hi)
        else:
            narrower = WIDTHS[index - 1]
            below = _stored(run.pk, name, narrower, lo // narrower, (hi + 1) // narrower - 1)
        below = below[np.isin(below[:, START].astype(np.int64) // width, buckets)]
        buckets, merged = merge(below, below[:, START].astype(np.int64) // width)
        _save(run, [name] * len(buckets), [width] * len(buckets), buckets.tolist(), merged)


def rebuild(run: Run, name: str) -> None:
    """Every bucket of one metric, from its points (a backfill, a fork's copy)."""
    MetricRollup.objects.filter(run=run, name=name).delete()
    below = _points(run.pk, name, -(2**31), 2**31 - 1)
    for width in WIDTHS:
        buckets, merged = merge(below, below[:, START].astype(np.int64) // width)
        _save(run, [name] * len(buckets), [width] * len(buckets), buckets.tolist(), merged)
        below = _as_buckets(width, buckets, merged)


# --- reads ----------------------------------------------------------------------------------------------


def covering(run_id: int, name: str, lo: int, hi: int, width_index: int) -> list[Piece]:
    """Steps lo..hi as the fewest bucket rows: whole stored buckets of WIDTHS[width_index],
    the ragged ends from narrower ones, down to the points."""
    if width_index < 0:
        return [_points_sql(run_id, name, lo, hi)]
    width = WIDTHS[width_index]
    first, last = -(-lo // width), (hi + 1) // width - 1  # whole buckets inside lo..hi
    if first > last:
        return covering(run_id, name, lo, hi, width_index - 1)
    pieces = covering(run_id, name, lo, first * width - 1, width_index - 1) if lo < first * width else []
    pieces.append(_stored_sql(run_id, name, width, first, last))
    if (last + 1) * width - 1 < hi:
        pieces += covering(run_id, name, (last + 1) * width, hi, width_index - 1)
    return pieces


def downsample(run_id: int, name: str, lo: int, hi: int, buckets: int) -> tuple[list[int], list[float], list[float], int]:
    """Steps lo..hi cut into `buckets` equal ranges, each giving its first, last, lowest and
    highest finite point (fewer where they coincide), in step order, as their steps, wall
    times and values; and the points counted in lo..hi, non-finite ones too.

    Reads the widest stored buckets of which the range holds at least `buckets`, so each
    chart bucket merges whole stored ones (a stored bucket goes to the chart bucket its
    first step falls in: off by less than one stored width at a chart bucket's edge)."""
    span = hi - lo + 1
    width_index = max((i for i, width in enumerate(WIDTHS) if span // width >= buckets), default=-1)
    rows = _fetch(covering(run_id, name, lo, hi, width_index))
    _, merged = merge(rows, (rows[:, START].astype(np.int64) - lo) * buckets // span)
    finite = merged[~np.isnan(merged[:, FIRST + 1])]
    # Distinct (step, wall, value) points, sorted by step (one point per step at most).
    points = np.unique(np.concatenate([finite[:, at - 1 : at + 2] for at in (FIRST, LAST, LOW, HIGH)]), axis=0)
    return points[:, 0].astype(np.int64).tolist(), points[:, 1].tolist(), points[:, 2].tolist(), int(merged[:, 0].sum())
