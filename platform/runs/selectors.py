"""Reads of runs and their telemetry, always scoped to what the asking user may see."""

import math
from collections.abc import Iterable, Sequence
from typing import TypedDict

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import Max, Min, OuterRef, QuerySet, Subquery

from accounts.permissions import visible_to
from engine.algorithms import ALGORITHMS
from engine.assets import BUILTIN_MODELS, BUILTIN_PREFIX
from engine.inference import GENERATION_BACKENDS
from engine.recipes import RECIPES
from engine.rollout import ROLLOUT_STRATEGIES
from engine.sampling import SAMPLERS
from engine.spec import RunSpec, parse_spec
from engine.tasks import BUILTIN_TASKS
from engine.training import TRAINING_BACKENDS
from runs import rollups
from runs.models import MetricPoint, Run, RunEvent, RunPrompt, RunPromptDifficulty, RunSample, RunStatus

User = AbstractBaseUser | AnonymousUser


def visible_runs(user: User) -> QuerySet[Run]:
    """Runs the user may see: those of every team they are in, whatever their role;
    staff see all (accounts.permissions)."""
    return visible_to(user, Run.objects.select_related("owner", "team"))


def get_visible_run(user: User, run_id: int) -> Run:
    """The run if the user may see it; Run.DoesNotExist otherwise (the same answer for
    "another team's" and "does not exist", so ids of other teams' runs don't leak)."""
    return visible_runs(user).get(pk=run_id)


def cancel_requested(run_id: int) -> bool:
    """Should the run's driver stop? True when a cancel was requested, and also when the
    run is gone or already finished (e.g. failed by the heartbeat reconciler)."""
    row = Run.objects.filter(pk=run_id).values_list("cancel_requested", "status").first()
    if row is None:
        return True
    requested, status = row
    return requested or status in RunStatus.TERMINAL


# --- metrics ------------------------------------------------------------------------------


class Series(TypedDict):
    steps: list[int]
    values: list[float | None]
    wall_times: list[float]
    total: int  # points stored in the asked range, before downsampling


def metric_names(run: Run) -> list[str]:
    # The summary holds every name the run has reported; cheaper than DISTINCT over points.
    return sorted(run.summary)


def metric_series(
    run: Run,
    names: Iterable[str],
    max_points: int = 1000,
    min_step: int | None = None,
    max_step: int | None = None,
) -> dict[str, Series]:
    """Each named metric's points in step order, at most about `max_points` of them.

    Longer series are downsampled with M4 (runs.rollups): the asked steps are cut into
    max_points/4 equal buckets and each bucket keeps its first, last, minimum and maximum
    point, so a chart drawn from them looks like the full series and no spike vanishes.
    Built from the run's stored buckets, not its points, so a million-point series costs
    a few thousand rows. Points whose value was not finite (stored as null) are dropped
    when downsampling.
    """
    series: dict[str, Series] = {}
    for name in names:
        points = MetricPoint.objects.filter(run=run, name=name)
        lo, hi = min_step, max_step
        if lo is None or hi is None:
            bounds = points.aggregate(lo=Min("step"), hi=Max("step"))
            lo = bounds["lo"] if lo is None else lo
            hi = bounds["hi"] if hi is None else hi
        steps: list[int] = []
        values: list[float | None] = []
        walls: list[float] = []
        total = 0
        if lo is not None and hi is not None:
            # One point per step at most: a range of up to max_points steps is sent whole.
            if hi - lo + 1 > max_points:
                steps, walls, values, total = rollups.downsample(run.pk, name, lo, hi, max(1, max_points // 4))
            if total <= max_points:  # a short range, or a sparse one
                rows = points.filter(step__gte=lo, step__lte=hi).order_by("step").values_list("step", "wall_time", "value")
                steps, walls, values = (list(column) for column in zip(*rows, strict=True)) if rows else ([], [], [])
                total = len(steps)
        series[name] = Series(steps=steps, values=values, wall_times=walls, total=total)
    return series


# --- events ----------------------------------------------------------------------------------


def run_events(
    run: Run,
    kinds: Sequence[str] = (),
    after: int | None = None,
    limit: int = 500,
) -> list[RunEvent]:
    """Events of the given kinds (all if none) with id > `after`, oldest first."""
    events = RunEvent.objects.filter(run=run)
    if kinds:
        events = events.filter(kind__in=kinds)
    if after is not None:
        events = events.filter(id__gt=after)
    return list(events.order_by("id")[:limit])


def latest_events(run: Run, kinds: Sequence[str] = (), count: int = 1) -> list[RunEvent]:
    """The last `count` events of the given kinds, oldest first (for "latest histogram")."""
    events = RunEvent.objects.filter(run=run)
    if kinds:
        events = events.filter(kind__in=kinds)
    newest_first = list(events.order_by("-id")[:count])
    return newest_first[::-1]


# --- the spec contract, for forms and the API ----------------------------------------------


def spec_defaults() -> dict:
    """A complete spec with every default filled in (what an empty submission runs)."""
    return parse_spec({}).model_dump(mode="json")


def spec_schema() -> dict:
    return RunSpec.model_json_schema()


def spec_choices() -> dict[str, list[dict[str, str]]]:
    """Named choices from the engine's registries: the UI never keeps a second list."""
    return {
        "algorithm": [{"name": name, "description": ALGORITHMS.get(name).description} for name in ALGORITHMS],
        "curriculum": [{"name": name, "description": SAMPLERS.get(name).description} for name in SAMPLERS],
        "dataset": [{"name": name} for name in BUILTIN_TASKS],
        "model": [{"name": f"{BUILTIN_PREFIX}{name}"} for name in BUILTIN_MODELS],
        # Registered as dotted paths (their modules import torch): names only here; the
        # spec schema's field descriptions say what each one does.
        "rollout_strategy": [{"name": name} for name in ROLLOUT_STRATEGIES],
        "orchestration": [{"name": name} for name in RECIPES],
        "generation_backend": [{"name": name} for name in GENERATION_BACKENDS],
        "training_backend": [{"name": name} for name in TRAINING_BACKENDS],
    }


# --- per-prompt telemetry (runs.prompts) -----------------------------------------------------


def with_prompt_text(rows: QuerySet) -> QuerySet:
    """`rows` (of a run's prompts: difficulty records or samples) with the prompt's text and
    reference answer as `prompt` and `answer`, None when the run reported none (a run
    recorded before prompts were). One unique-index probe per row returned."""
    texts = RunPrompt.objects.filter(run=OuterRef("run"), prompt_id=OuterRef("prompt_id"))
    return rows.annotate(prompt=Subquery(texts.values("prompt")[:1]), answer=Subquery(texts.values("answer")[:1]))


def prompt_difficulties(run: Run) -> QuerySet[RunPromptDifficulty]:
    """The run's difficulty store, one row per prompt, in prompt id order, with each
    prompt's text and answer (with_prompt_text)."""
    return with_prompt_text(RunPromptDifficulty.objects.filter(run=run).order_by("prompt_id"))


def run_samples(run: Run, prompt_id: str | None = None) -> QuerySet[RunSample]:
    """The run's kept samples (of one prompt when given), newest step first, then in the
    order each step reported them, with their prompt's text and answer (with_prompt_text)."""
    samples = RunSample.objects.filter(run=run)
    if prompt_id is not None:
        samples = samples.filter(prompt_id=prompt_id)
    return with_prompt_text(samples.order_by("-step", "split", "position"))


HEATMAP_BY = ("difficulty", "mean")


class Heatmap(TypedDict):
    by: str  # difficulty: the dataset's own (the task's parameter); mean: the run's posterior mean now
    edges: list[float]  # buckets + 1 bucket edges; the last bucket holds its upper edge
    steps: list[int]  # each column's first step (a column merges consecutive steps past max_columns)
    attempts: list[list[int]]  # [bucket][column]
    successes: list[list[int]]
    pass_rate: list[list[float | None]]  # None where the bucket had no attempts


def pass_rate_heatmap(
    run: Run, by: str = "difficulty", buckets: int = 10, split: str = "train", max_columns: int = 500
) -> Heatmap:
    """Pass rate by difficulty bucket over steps, from the run's `prompt_results` events
    (every prompt's attempts and successes of every step). Prompts are bucketed by the
    dataset's difficulty (equal-width buckets between its smallest and largest value;
    prompts without one are left out) or by their posterior mean in the run's difficulty
    store now (equal-width buckets of [0, 1]). More steps than `max_columns` are merged,
    consecutive ones summed into one column."""
    results_of_step: dict[int, list[dict]] = {}
    # A step replayed by a resumed attempt has two events; the later one is the run's, as
    # for metric points.
    events = RunEvent.objects.filter(run=run, kind="prompt_results", payload__split=split).order_by("id")
    for step, payload in events.values_list("step", "payload").iterator(chunk_size=200):
        results_of_step[step] = payload["results"]
    means = dict(RunPromptDifficulty.objects.filter(run=run).values_list("prompt_id", "mean")) if by == "mean" else None

    def value_of(result: dict) -> float | None:
        # The dataset's difficulty is null in the event when the dataset has none.
        return result["difficulty"] if means is None else means.get(result["prompt_id"])

    values = [v for results in results_of_step.values() for r in results if (v := value_of(r)) is not None]
    low, high = (0.0, 1.0) if means is not None or not values else (min(values), max(values))
    width = (high - low) / buckets
    steps = sorted(results_of_step)
    per_column = max(1, math.ceil(len(steps) / max_columns))
    columns = math.ceil(len(steps) / per_column)
    attempts = [[0] * columns for _ in range(buckets)]
    successes = [[0] * columns for _ in range(buckets)]
    for index, step in enumerate(steps):
        column = index // per_column
        for result in results_of_step[step]:
            value = value_of(result)
            if value is None:
                continue
            bucket = min(int((value - low) / width), buckets - 1) if width > 0 else 0
            attempts[bucket][column] += result["attempts"]
            successes[bucket][column] += result["successes"]
    return Heatmap(
        by=by,
        edges=[low + width * i for i in range(buckets)] + [high],
        steps=steps[::per_column],
        attempts=attempts,
        successes=successes,
        pass_rate=[
            [s / a if a else None for s, a in zip(row_s, row_a, strict=True)]
            for row_s, row_a in zip(successes, attempts, strict=True)
        ],
    )
