"""Runs, their status history, and their telemetry.

Only the runs services (`runs.launch`, `runs.lifecycle`, `runs.attempts`, `runs.telemetry`)
write to these tables; everything else reads through `runs.selectors`. Metrics live apart from runs in a narrow append-only table; list pages
read `Run.summary` instead.
"""

from django.conf import settings
from django.db import models
from django.utils import timezone
from django.utils.functional import classproperty


class RunStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    # Admission (quotas.admission) granted it capacity; a worker will pick it up.
    ADMITTED = "admitted", "Admitted"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"

    # classproperty, not a plain attribute: a plain frozenset would become an enum member.
    @classproperty
    def ACTIVE(cls) -> frozenset["RunStatus"]:  # noqa: N802 - reads like a constant
        """Not finished yet: the run may still change."""
        return frozenset({cls.QUEUED, cls.ADMITTED, cls.RUNNING})

    @classproperty
    def TERMINAL(cls) -> frozenset["RunStatus"]:  # noqa: N802
        """Finished for good: nothing leaves these states."""
        return frozenset({cls.SUCCEEDED, cls.FAILED, cls.CANCELLED})


# The state machine: the only moves `runs.lifecycle.transition` makes.
TRANSITIONS: dict[str, frozenset[str]] = {
    RunStatus.QUEUED: frozenset({RunStatus.ADMITTED, RunStatus.CANCELLED, RunStatus.FAILED}),
    # admitted → queued: the admission was taken back (its worker never claimed it).
    RunStatus.ADMITTED: frozenset({RunStatus.RUNNING, RunStatus.QUEUED, RunStatus.CANCELLED, RunStatus.FAILED}),
    # running → queued: requeued after its worker vanished, to resume from a checkpoint.
    RunStatus.RUNNING: frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.QUEUED}),
    RunStatus.SUCCEEDED: frozenset(),
    RunStatus.FAILED: frozenset(),
    RunStatus.CANCELLED: frozenset(),
}


class Run(models.Model):
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="runs")
    # Who may see and manage the run follows from roles in this team (accounts.permissions).
    # db_index=False: the (team, created_at, id) index below leads with the team.
    team = models.ForeignKey("accounts.Team", on_delete=models.PROTECT, related_name="runs", db_index=False)
    name = models.CharField(max_length=200)
    # The fully resolved engine spec (every default filled in), so the run can be reproduced.
    spec = models.JSONField()
    status = models.CharField(max_length=16, choices=RunStatus.choices, default=RunStatus.QUEUED)
    status_reason = models.TextField(blank=True, default="")
    # Set by a cancel request while running; the driver polls it between steps.
    cancel_requested = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    last_heartbeat_at = models.DateTimeField(null=True, blank=True)
    # The highest step reported so far; engine steps count from 1, so this is steps done.
    current_step = models.PositiveIntegerField(default=0)
    total_steps = models.PositiveIntegerField(default=0)
    # Latest value of each metric (name → value or null when not finite), for list pages.
    summary = models.JSONField(default=dict, blank=True)
    # When the status last changed and when the run's driver was last handed to the
    # broker: the reconciler re-enqueues an admitted or queued run left waiting too long.
    status_changed_at = models.DateTimeField(default=timezone.now)
    enqueued_at = models.DateTimeField(null=True, blank=True)
    # When current_step last grew: heartbeats without progress mean a stuck run.
    step_advanced_at = models.DateTimeField(null=True, blank=True)
    # Checkpoint retention, resolved at launch (services.resolve_retention):
    # {"keep_last": N, "keep_best": K, "metric": name, "mode": "max" | "min"}.
    retention = models.JSONField(default=dict, blank=True)
    # Lineage: a fork starts from one of its parent's checkpoints; a clone has a parent only.
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children")
    forked_from = models.ForeignKey(
        "Checkpoint", null=True, blank=True, on_delete=models.PROTECT, related_name="forks"
    )
    forked_from_step = models.PositiveIntegerField(null=True, blank=True)
    # A GRPO twin (runs.twins): the run whose technique it checks, with that technique off.
    twin_of = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="twins")

    class Meta:
        ordering = ["-created_at", "-id"]
        # The runs list, newest first, read in index order (no sort) as it opens, filtered
        # by status or team, and from a keyset cursor (rollyard.pagination). Each also
        # serves lookups by its first column (the admission sweep's status, a team's runs).
        # On PostgreSQL the search has a trigram index too (migration 0010), kept out of
        # the model because SQLite cannot build it.
        indexes = [
            models.Index(fields=["created_at", "id"], name="run_list_newest"),
            models.Index(fields=["status", "created_at", "id"], name="run_list_by_status"),
            models.Index(fields=["team", "created_at", "id"], name="run_list_by_team"),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.name}"

    @property
    def is_terminal(self) -> bool:
        return self.status in RunStatus.TERMINAL

    @property
    def progress(self) -> float:
        """Fraction of steps done, 0..1 (a succeeded run counts as done)."""
        if self.status == RunStatus.SUCCEEDED:
            return 1.0
        if not self.total_steps:
            return 0.0
        return min(1.0, self.current_step / self.total_steps)


class RunStatusChange(models.Model):
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="status_changes")
    # Empty for the row that records the run's creation.
    from_status = models.CharField(max_length=16, choices=RunStatus.choices, blank=True)
    to_status = models.CharField(max_length=16, choices=RunStatus.choices)
    reason = models.TextField(blank=True, default="")
    at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["at", "id"]

    def __str__(self) -> str:
        return f"{self.from_status or '∅'} → {self.to_status}"


class MetricPoint(models.Model):
    """One scalar of one step. Charts read it downsampled, from its buckets (MetricRollup).

    One point per (run, name, step): a re-sent batch overwrites its own points, and a
    resumed attempt that reports a step again (it replays from its checkpoint) replaces
    the earlier attempt's point; only the current attempt may write (services.record_events)."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="metric_points")
    name = models.CharField(max_length=200)
    step = models.IntegerField()
    wall_time = models.FloatField(help_text="unix seconds")
    # NULL stands for a value that was not finite (NaN, ±inf): SQLite cannot store NaN and
    # JSON cannot carry it; charts show a gap.
    value = models.FloatField(null=True)

    class Meta:
        # Its index also serves the (run, name, step) reads of charts.
        constraints = [models.UniqueConstraint(fields=["run", "name", "step"], name="metricpoint_one_per_run_name_step")]

    def __str__(self) -> str:
        return f"{self.name}@{self.step}={self.value}"


class RunEvent(models.Model):
    """Every engine event that is not a scalar metric: histograms, per-prompt results,
    spans, heartbeats, logs, status. `payload` is the engine event as JSON."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=32)
    step = models.IntegerField(null=True, blank=True)
    wall_time = models.FloatField(help_text="unix seconds")
    payload = models.JSONField()

    class Meta:
        indexes = [models.Index(fields=["run", "kind", "id"], name="runevent_run_kind_id")]

    def __str__(self) -> str:
        return f"{self.kind}@{self.step}"


class AttemptOutcome(models.TextChoices):
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"
    # Its worker vanished (heartbeat lost); the run was requeued or failed by the reconciler.
    LOST = "lost", "Lost"


class RunAttempt(models.Model):
    """One worker's go at a run: opened when a worker claims the run, closed when the run
    leaves `running`. A requeued run gets a new attempt that resumes from a checkpoint."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="attempts")
    number = models.PositiveIntegerField()
    worker_host = models.CharField(max_length=255)
    worker_pid = models.PositiveIntegerField()
    started_at = models.DateTimeField(default=timezone.now)
    ended_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=16, choices=AttemptOutcome.choices, default=AttemptOutcome.RUNNING)
    reason = models.TextField(blank=True, default="")
    # Where this attempt's engine started from: null for a fresh start.
    resumed_from = models.ForeignKey(
        "Checkpoint", null=True, blank=True, on_delete=models.SET_NULL, related_name="resumed_attempts"
    )
    resumed_from_step = models.PositiveIntegerField(null=True, blank=True)
    # How many of its driver's event batches are stored (the sink numbers them 1, 2, …): a
    # batch numbered at or below it is a re-send after a lost reply, and is ignored whole.
    batches_recorded = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["run", "number"]
        constraints = [models.UniqueConstraint(fields=["run", "number"], name="runattempt_run_number")]

    def __str__(self) -> str:
        return f"#{self.run_id} attempt {self.number} ({self.outcome})"


class Checkpoint(models.Model):
    """A checkpoint folder the engine wrote (a `checkpoint` event). Retention deletes the
    folder and stamps deleted_at; the row stays, so history and lineage stay readable."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="checkpoints")
    step = models.PositiveIntegerField()
    path = models.CharField(max_length=1000)
    # The latest held-out metrics when it was written: what "keep best" ranks by.
    metrics = models.JSONField(default=dict, blank=True)
    size_bytes = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["run", "step"]
        constraints = [models.UniqueConstraint(fields=["run", "step"], name="checkpoint_run_step")]

    def __str__(self) -> str:
        return f"#{self.run_id} step {self.step}"


class AlertKind(models.TextChoices):
    DEAD = "dead", "Dead (heartbeat lost)"
    STUCK = "stuck", "Stuck (no step progress)"
    IDLE = "idle", "Idle above threshold"
    # Opened by an AlertRule; one open alert per rule rather than per kind.
    METRIC = "metric", "Metric threshold"


class AlertComparison(models.TextChoices):
    ABOVE = "above", "above"
    BELOW = "below", "below"


class AlertRule(models.Model):
    """A metric threshold on one run (W&B's and MLflow's alert rules): an alert opens once
    `consecutive` reported steps in a row have `metric` strictly above (or below)
    `threshold`, and resolves at the first reported step that does not. Set at launch or
    added later (runs.alerts.add_rule); the housekeeper's sweep evaluates it
    (runs.alerts.check_rules) from the points reported since its last look."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="alert_rules")
    metric = models.CharField(max_length=200, help_text="a metric name (docs/metrics.md)")
    comparison = models.CharField(max_length=8, choices=AlertComparison.choices)
    threshold = models.FloatField()
    consecutive = models.PositiveIntegerField(default=1, help_text="reported steps in a row that must cross")
    # Mailed besides the run's owner.
    emails = models.JSONField(default=list, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(default=timezone.now)
    # The sweep's place: the last step it evaluated, and how many reported steps in a row
    # up to it crossed the threshold.
    checked_step = models.IntegerField(default=0)
    streak = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["run", "id"]

    def __str__(self) -> str:
        return f"#{self.run_id} {self.metric} {self.comparison} {self.threshold:g}"

    @property
    def open_alert(self) -> "Alert | None":
        return self.alerts.filter(resolved_at__isnull=True).first()


class Alert(models.Model):
    """One problem of one run, open until the sweep sees it gone. At most one open alert
    per (run, kind) for dead, stuck and idle, and per rule for metric alerts, so a problem
    that lasts many sweeps notifies once."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="alerts")
    kind = models.CharField(max_length=16, choices=AlertKind.choices)
    # The rule of a metric alert; null for the other kinds and once the rule is deleted.
    rule = models.ForeignKey(AlertRule, null=True, blank=True, on_delete=models.SET_NULL, related_name="alerts")
    message = models.TextField()
    opened_at = models.DateTimeField(default=timezone.now)
    resolved_at = models.DateTimeField(null=True, blank=True)
    # Delivery of the opening notice, by channel; each retried by later sweeps until it succeeds.
    webhook_delivered_at = models.DateTimeField(null=True, blank=True)
    webhook_error = models.TextField(blank=True, default="")
    # Who is mailed, fixed when the alert opens: the run's owner and the rule's addresses.
    email_to = models.JSONField(default=list, blank=True)
    email_delivered_at = models.DateTimeField(null=True, blank=True)
    email_error = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["-opened_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["run", "kind"],
                condition=models.Q(resolved_at__isnull=True) & ~models.Q(kind="metric"),
                name="alert_one_open_per_run_kind",
            ),
            models.UniqueConstraint(
                fields=["run", "rule"], condition=models.Q(resolved_at__isnull=True), name="alert_one_open_per_run_rule"
            ),
        ]

    def __str__(self) -> str:
        return f"#{self.run_id} {self.kind}"


class RunPromptDifficulty(models.Model):
    """The run's difficulty store, one row per prompt: the latest `difficulty` event's
    record of it (cumulative totals for the run, engine.sampling.difficulty). Upserted
    on (run, prompt_id), the latest write winning, as for metric points: a resumed
    attempt that replays a step reports the store restored from its checkpoint.

    Its history over steps is not kept here: the per-step attempts and successes of each
    prompt are the run's `prompt_results` events (RunEvent), which add up to these totals."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="prompt_difficulties")
    # Text, not a bounded char field: an id the engine accepts must never fail a batch.
    prompt_id = models.TextField()
    attempts = models.PositiveIntegerField()
    successes = models.PositiveIntegerField()
    alpha = models.FloatField(help_text="the pass rate's Beta posterior")
    beta = models.FloatField()
    mean = models.FloatField()
    low = models.FloatField(help_text="the credible interval (90% unless the spec says otherwise)")
    high = models.FloatField()
    last_step = models.IntegerField(help_text="the last step that rolled it out (0: never)")
    allocated = models.PositiveIntegerField(help_text="rollouts planned for it at last_step")
    # The event that wrote the row: its step and unix time ("last seen").
    step = models.IntegerField()
    wall_time = models.FloatField(help_text="unix seconds")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["run", "prompt_id"], name="runpromptdifficulty_run_prompt"),
        ]
        # The per-prompt table sorts by these; a run may hold hundreds of thousands of prompts.
        indexes = [
            models.Index(fields=["run", "mean"], name="runpromptdifficulty_mean"),
            models.Index(fields=["run", "attempts"], name="runpromptdifficulty_attempts"),
            models.Index(fields=["run", "last_step"], name="runpromptdifficulty_last_step"),
            models.Index(fields=["run", "allocated"], name="runpromptdifficulty_allocated"),
        ]

    def __str__(self) -> str:
        return f"#{self.run_id} {self.prompt_id}: {self.successes}/{self.attempts}"


class SampleStatus(models.TextChoices):
    COMPLETED = "completed", "Completed"
    TRUNCATED = "truncated", "Truncated (length)"
    ABORTED = "aborted", "Aborted"


class RunSample(models.Model):
    """One sampled response kept for drill-down (a `samples` event: at most
    telemetry.samples_per_prompt per prompt and step). One set per (run, step, split):
    a step reported again (by a resumed attempt) replaces its set. Only the newest
    settings.ROLLYARD_SAMPLE_STEPS_KEPT steps of a run are kept (runs.prompts)."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="samples")
    step = models.IntegerField()
    split = models.CharField(max_length=8, default="train")
    # Its place in the step's event: keeps the engine's order (right, wrong, the others).
    position = models.PositiveIntegerField()
    prompt_id = models.TextField()
    response = models.TextField()
    reward = models.FloatField(help_text="the verifier's verdict, before shaping")
    length = models.PositiveIntegerField(help_text="response tokens")
    status = models.CharField(max_length=16, choices=SampleStatus.choices)
    # The policy versions (optimiser steps so far) that sampled its first and last tokens; -1: unknown.
    first_version = models.IntegerField()
    last_version = models.IntegerField()
    wall_time = models.FloatField(help_text="unix seconds")

    class Meta:
        constraints = [
            # Its index serves "a step's samples" and the retention's delete of old steps.
            models.UniqueConstraint(fields=["run", "step", "split", "position"], name="runsample_run_step_split_position"),
        ]
        # "A prompt's samples, newest step first".
        indexes = [models.Index(fields=["run", "prompt_id", "step"], name="runsample_run_prompt_step")]

    def __str__(self) -> str:
        return f"#{self.run_id}@{self.step} {self.prompt_id} ({self.status}, reward {self.reward})"


class RunPrompt(models.Model):
    """A prompt the run sampled, as the model was given it, and its reference answer: the
    drill-down's heading (a `samples` event's `prompts`, each prompt once). Only the engine
    knows the text faithfully (a built-in task's id is a hash of it, a dataset's template
    wraps it), so it is stored at ingest; the first report of a prompt is kept. One row per
    prompt the run ever sampled, like its difficulty store: a prompt whose samples fell out
    of the retention window keeps its text for the difficulty table."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="prompts")
    prompt_id = models.TextField()
    prompt = models.TextField(help_text="the text the model was given (a dataset's template applied)")
    answer = models.TextField(help_text="the reference answer the verifier compares responses with")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["run", "prompt_id"], name="runprompt_run_prompt")]

    def __str__(self) -> str:
        return f"#{self.run_id} {self.prompt_id}"


class MetricRollup(models.Model):
    """One bucket of `width` consecutive steps of one metric (steps width·bucket …
    width·(bucket+1) − 1): its point count and its first, last, lowest and highest finite
    point (step, wall time, value; null when it holds none). Kept by runs.rollups at
    several widths so a chart over any range reads buckets, not points."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="metric_rollups")
    name = models.CharField(max_length=200)
    width = models.PositiveIntegerField()
    bucket = models.IntegerField()
    count = models.PositiveIntegerField(help_text="points in the bucket, non-finite ones too")
    first_step = models.IntegerField(null=True)
    first_wall = models.FloatField(null=True)
    first_value = models.FloatField(null=True)
    last_step = models.IntegerField(null=True)
    last_wall = models.FloatField(null=True)
    last_value = models.FloatField(null=True)
    low_step = models.IntegerField(null=True)
    low_wall = models.FloatField(null=True)
    low_value = models.FloatField(null=True)
    high_step = models.IntegerField(null=True)
    high_wall = models.FloatField(null=True)
    high_value = models.FloatField(null=True)

    class Meta:
        # Its index serves the charts' range reads (run, name, width, bucket between …).
        constraints = [
            models.UniqueConstraint(fields=["run", "name", "width", "bucket"], name="metricrollup_run_name_width_bucket")
        ]

    def __str__(self) -> str:
        return f"#{self.run_id} {self.name} [{self.width}×{self.bucket}]"
