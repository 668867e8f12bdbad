"""Datasets and presets a team keeps, and what each run took from them.

Only `catalog.services` writes to these tables; everything else reads through
`catalog.selectors`. A dataset's rows live in the engine's own file format on disk (the
engine reads that file at run time); `PromptRecord` mirrors each accepted row so that pages
can preview it and attach each prompt's pass-rate history (`PromptStat`, per step) and
each run's difficulty posterior of it (`PromptRunDifficulty`) from the runs that trained
on it.
"""

from django.conf import settings
from django.db import models
from django.utils import timezone

from engine.data import ANSWER_FORMATS, FORMATS


class Dataset(models.Model):
    team = models.ForeignKey("accounts.Team", on_delete=models.PROTECT, related_name="datasets")
    name = models.CharField(max_length=100)
    description = models.TextField(blank=True, default="")
    # The engine loader's formats; hf_disk (a datasets.save_to_disk folder) only for
    # registered server paths.
    format = models.CharField(max_length=16, choices=[(name, name) for name in FORMATS])
    # role → column name: {"prompt": ..., "answer": ..., "id": ..., "difficulty": ..., "split": ...}
    columns = models.JSONField(default=dict)
    answer_format = models.CharField(max_length=16, choices=[(name, name) for name in ANSWER_FORMATS], default="plain")
    # Absolute path the engine reads: a file under ROLLYARD_DATA_DIR for uploads, the
    # server's own path for registered datasets (which are never moved or deleted by us).
    path = models.CharField(max_length=1024)
    registered = models.BooleanField(default=False, help_text="a server path registered in place, not an upload")
    # The uploaded file's name after sanitising (never used as a path by itself).
    original_filename = models.CharField(max_length=255, blank=True, default="")
    size_bytes = models.BigIntegerField(default=0)
    row_count = models.PositiveIntegerField(default=0)
    # split name → rows, e.g. {"train": 900, "test": 100}
    split_counts = models.JSONField(default=dict)
    # Rows the loader refused (only when the uploader chose to skip them): how many, and
    # the first of them as [{"line": n, "reason": "..."}].
    skipped_row_count = models.PositiveIntegerField(default=0)
    skipped_rows = models.JSONField(default=list, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="datasets"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["team", "name"], name="dataset_team_name_unique")]
        ordering = ["team__name", "name"]

    def __str__(self) -> str:
        return self.reference

    @property
    def reference(self) -> str:
        """How a run spec names it: "<team>/<name>"."""
        return f"{self.team.name}/{self.name}"


class PromptRecord(models.Model):
    """One accepted row of a dataset, as the engine's loader read it."""

    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="records")
    # Row order in the file, for previews.
    position = models.PositiveIntegerField()
    # The engine's Problem.id: what a run's prompt_results events name it by.
    prompt_id = models.CharField(max_length=200)
    prompt = models.TextField()
    answer = models.TextField()
    split = models.CharField(max_length=32, default="train")
    difficulty = models.FloatField(null=True, blank=True, help_text="as given in the dataset")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["dataset", "prompt_id"], name="promptrecord_dataset_prompt_unique")
        ]
        indexes = [models.Index(fields=["dataset", "split", "position"], name="promptrecord_dataset_split_pos")]
        ordering = ["dataset", "position"]

    def __str__(self) -> str:
        return f"{self.dataset_id}:{self.prompt_id}"


class PromptStat(models.Model):
    """How one prompt fared at one step of one run: the prompt's difficulty history.
    Copied from the run's `prompt_results` events (split "test" for evaluations)."""

    record = models.ForeignKey(PromptRecord, on_delete=models.CASCADE, related_name="stats")
    run = models.ForeignKey("runs.Run", on_delete=models.CASCADE, related_name="prompt_stats")
    step = models.IntegerField()
    split = models.CharField(max_length=16, default="train")
    attempts = models.PositiveIntegerField()
    successes = models.PositiveIntegerField()
    mean_length = models.FloatField(null=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["record", "run", "step", "split"], name="promptstat_record_run_step_unique")
        ]
        ordering = ["run_id", "step", "split"]

    def __str__(self) -> str:
        return f"{self.record}@{self.run_id}/{self.step}: {self.successes}/{self.attempts}"


class PromptRunDifficulty(models.Model):
    """What one run has learnt about one prompt of the dataset: the latest row of the
    run's difficulty store (totals over that run, a Beta posterior of its pass rate).
    Copied from the run's `difficulty` events, the latest winning; summed over runs, it
    gives the prompt's training attempts and successes and when it was last seen."""

    record = models.ForeignKey(PromptRecord, on_delete=models.CASCADE, related_name="difficulties")
    run = models.ForeignKey("runs.Run", on_delete=models.CASCADE, related_name="prompt_run_difficulties")
    attempts = models.PositiveIntegerField()
    successes = models.PositiveIntegerField()
    alpha = models.FloatField()
    beta = models.FloatField()
    mean = models.FloatField()
    low = models.FloatField()
    high = models.FloatField()
    last_step = models.IntegerField()
    # When the run last reported it (its event's time): "last seen".
    seen_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["record", "run"], name="promptrundifficulty_record_run")]
        ordering = ["record", "run_id"]

    def __str__(self) -> str:
        return f"{self.record}@{self.run_id}: {self.successes}/{self.attempts}"


class PresetKind(models.TextChoices):
    # The value is also the run spec section the preset fills.
    ALGORITHM = "algorithm", "Algorithm"
    CURRICULUM = "curriculum", "Curriculum"


class Preset(models.Model):
    """One immutable version of a named preset: an edit stores version n + 1, so a run
    that used version n can always be reproduced."""

    team = models.ForeignKey("accounts.Team", on_delete=models.PROTECT, related_name="presets")
    kind = models.CharField(max_length=16, choices=PresetKind.choices)
    name = models.CharField(max_length=100)
    version = models.PositiveIntegerField()
    description = models.TextField(blank=True, default="")
    # The spec section, resolved by the engine's schema (every default filled in).
    body = models.JSONField()
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="presets"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["team", "kind", "name", "version"], name="preset_team_kind_name_version")
        ]
        ordering = ["team__name", "kind", "name", "-version"]

    def __str__(self) -> str:
        return self.reference

    @property
    def reference(self) -> str:
        """How a run spec names it: "<team>/<name>@<version>"."""
        return f"{self.team.name}/{self.name}@{self.version}"


class RunInputs(models.Model):
    """The catalog entries a run was launched from (its spec holds them resolved)."""

    run = models.OneToOneField("runs.Run", on_delete=models.CASCADE, related_name="inputs")
    # PROTECT: a dataset a run trained on cannot vanish from under its history.
    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, null=True, blank=True, related_name="runs")
    presets = models.ManyToManyField(Preset, blank=True, related_name="runs")

    def __str__(self) -> str:
        return f"inputs of run {self.run_id}"
