"""Reads of datasets, prompt records and presets, always scoped to what the user may see:
another team's dataset or preset does not exist for them (404, like a missing one)."""

from pathlib import Path

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import Count, F, FloatField, Max, OuterRef, QuerySet, Subquery, Sum
from django.db.models.functions import Cast, Coalesce, NullIf

from accounts.permissions import visible_to
from catalog.models import Dataset, Preset, PromptRecord, PromptRunDifficulty, PromptStat
from engine.algorithms import ALGORITHMS
from engine.sampling import SAMPLERS
from engine.spec import AlgorithmSpec, CurriculumSpec

User = AbstractBaseUser | AnonymousUser


def visible_datasets(user: User) -> QuerySet[Dataset]:
    return visible_to(user, Dataset.objects.select_related("team", "created_by"))


def visible_dataset_at(user: User, path: str) -> Dataset | None:
    """The dataset the user may see whose file is at `path` (after resolving symlinks and
    '..' on both sides), None when none is: how a raw path in a run spec (a clone's, a
    fork's) is tied back to its catalog entry."""
    if "\x00" in path or not Path(path).is_absolute():
        return None  # no stored path looks like this (and resolve() refuses a NUL)
    target = Path(path).resolve()
    # Stored paths end with the file's own name; that narrows the rows to compare.
    for dataset in visible_to(user, Dataset.objects.filter(path__endswith=target.name)):
        if Path(dataset.path).resolve() == target:
            return dataset
    return None


def get_visible_dataset(user: User, dataset_id: int) -> Dataset:
    """Raises Dataset.DoesNotExist for a missing dataset and another team's alike."""
    return visible_datasets(user).get(pk=dataset_id)


def records_with_stats(dataset: Dataset, split: str | None = None) -> QuerySet[PromptRecord]:
    """The dataset's rows in file order, each with its attempts, successes and pass rate
    summed over every run that trained or evaluated on it (None when never tried), how
    many runs' difficulty stores hold it and when one of them last reported it."""
    records = dataset.records.all()
    if split:
        records = records.filter(split=split)
    # Subqueries, not a second join: joining stats and difficulties together would
    # multiply each one's rows by the other's.
    difficulties = PromptRunDifficulty.objects.filter(record=OuterRef("pk")).order_by().values("record")
    return records.annotate(
        attempts=Sum("stats__attempts"),
        successes=Sum("stats__successes"),
        pass_rate=Cast(F("successes"), FloatField()) / NullIf(F("attempts"), 0),
        runs_seen=Coalesce(Subquery(difficulties.annotate(runs=Count("run")).values("runs")), 0),
        last_seen_at=Subquery(difficulties.annotate(last=Max("seen_at")).values("last")),
    ).order_by("position")


def get_record(dataset: Dataset, record_id: int) -> PromptRecord:
    return records_with_stats(dataset).get(pk=record_id)


def prompt_history(user: User, record: PromptRecord) -> QuerySet[PromptStat]:
    """How the prompt fared, step by step, in the runs the user may see (a run of a team
    they are not in may have used their team's dataset; its name stays hidden)."""
    stats = record.stats.select_related("run").order_by("run_id", "step", "split")
    return visible_to(user, stats, "run__team")


def prompt_difficulties(user: User, record: PromptRecord) -> QuerySet[PromptRunDifficulty]:
    """Each run's difficulty posterior of the prompt, for the runs the user may see,
    most recently seen first."""
    rows = record.difficulties.select_related("run").order_by("-seen_at", "-run_id")
    return visible_to(user, rows, "run__team")


def visible_presets(user: User) -> QuerySet[Preset]:
    return visible_to(user, Preset.objects.select_related("team", "created_by"))


def get_visible_preset(user: User, preset_id: int) -> Preset:
    """Raises Preset.DoesNotExist for a missing preset and another team's alike."""
    return visible_presets(user).get(pk=preset_id)


def preset_versions(preset: Preset) -> QuerySet[Preset]:
    """Every version of the preset's name, newest first."""
    return Preset.objects.filter(team=preset.team, kind=preset.kind, name=preset.name).order_by("-version")


def algorithm_defaults() -> list[dict]:
    """The engine's algorithm registry: each algorithm with the spec section it resolves
    to (what an algorithm preset starts from)."""
    return [
        {
            "name": name,
            "description": ALGORITHMS.get(name).description,
            "defaults": AlgorithmSpec.model_validate({"name": name}).model_dump(mode="json"),
        }
        for name in ALGORITHMS.names()
    ]


def curriculum_defaults() -> list[dict]:
    """The engine's curriculum strategies: each with the spec section it resolves to
    (what a curriculum preset starts from)."""
    return [
        {
            "name": name,
            "description": SAMPLERS.get(name).description,
            "defaults": CurriculumSpec.model_validate({"strategy": name}).model_dump(mode="json"),
        }
        for name in SAMPLERS.names()
    ]
