"""Shapes of runs and telemetry on the wire (REST and the websocket's hello)."""

from typing import Any

from django.urls import reverse
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from quotas.models import DEFAULT_POOL, DEFAULT_PRIORITY, MAX_PRIORITY, MIN_PRIORITY
from runs.models import Alert, AlertRule, Checkpoint, Run, RunAttempt, RunEvent, RunPromptDifficulty, RunSample
from runs.selectors import HEATMAP_BY


class RunSerializer(serializers.ModelSerializer):
    owner = serializers.CharField(source="owner.get_username", read_only=True)
    team = serializers.CharField(source="team.name", read_only=True)
    progress = serializers.FloatField(read_only=True)
    url = serializers.SerializerMethodField(help_text="the run's page")
    api_url = serializers.SerializerMethodField()

    class Meta:
        model = Run
        fields = [
            "id", "name", "owner", "team", "team_id", "status", "status_reason", "cancel_requested",
            "created_at", "started_at", "finished_at", "last_heartbeat_at",
            "current_step", "total_steps", "progress", "summary", "url", "api_url",
        ]  # fmt: skip
        read_only_fields = fields

    def get_url(self, run: Run) -> str:
        return reverse("runs:detail", args=[run.pk])

    def get_api_url(self, run: Run) -> str:
        return reverse("api:run-detail", args=[run.pk])


class RunDetailSerializer(RunSerializer):
    class Meta(RunSerializer.Meta):
        fields = [*RunSerializer.Meta.fields, "spec", "retention", "parent", "forked_from_step", "twin_of"]
        read_only_fields = fields


class AlertRuleSerializer(serializers.ModelSerializer):
    """A metric-threshold rule. Written through runs.alerts.check_rule, which names each
    bad field: this serializer documents the shape and writes the answer."""

    created_by = serializers.CharField(source="created_by.get_username", read_only=True, default=None)
    open_alert = serializers.SerializerMethodField(help_text="the id of the rule's open alert, null when none")

    class Meta:
        model = AlertRule
        fields = ["id", "metric", "comparison", "threshold", "consecutive", "emails", "created_by", "created_at",
                  "checked_step", "open_alert"]  # fmt: skip
        read_only_fields = ["id", "created_by", "created_at", "checked_step", "open_alert"]
        extra_kwargs = {
            "comparison": {"help_text": "alert while the metric is above (or below) the threshold, strictly"},
            "emails": {"help_text": "addresses mailed besides the run's owner (at most 10)"},
            "checked_step": {"help_text": "the last step the housekeeper's sweep evaluated"},
        }

    def get_open_alert(self, rule: AlertRule) -> int | None:
        alert = rule.open_alert
        return alert.pk if alert else None


@extend_schema_field(AlertRuleSerializer(many=True))
class AlertRulesField(serializers.JSONField):
    """A launch's rules, passed on as given: runs.alerts.check_rules names each bad field."""


class AlertSerializer(serializers.ModelSerializer):
    class Meta:
        model = Alert
        fields = ["id", "kind", "rule", "message", "opened_at", "resolved_at", "webhook_delivered_at",
                  "email_delivered_at"]  # fmt: skip
        read_only_fields = fields


class RunCreateSerializer(serializers.Serializer):
    spec = serializers.JSONField(help_text="a run spec (see /api/spec/schema/); omitted settings take defaults")
    name = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
    retention = serializers.DictField(
        required=False, help_text="checkpoint retention overrides: keep_last, keep_best, metric, mode (max|min)"
    )
    team = serializers.CharField(
        max_length=100, required=False, help_text="the team's id or name (member role needed); default: your first team"
    )
    pool = serializers.CharField(max_length=50, default=DEFAULT_POOL, help_text="the accelerator pool whose queue it joins")
    priority = serializers.IntegerField(
        min_value=MIN_PRIORITY, max_value=MAX_PRIORITY, default=DEFAULT_PRIORITY,
        help_text="higher goes first in the pool's queue; above 0 needs the team's admin role",
    )  # fmt: skip
    alert_rules = AlertRulesField(required=False, help_text="metric-threshold alert rules of the run")


class MetricsQuerySerializer(serializers.Serializer):
    name = serializers.ListField(child=serializers.CharField(max_length=200), required=False, default=list)
    max_points = serializers.IntegerField(min_value=4, max_value=100_000, default=1000)
    min_step = serializers.IntegerField(required=False)
    max_step = serializers.IntegerField(required=False)


class EventsQuerySerializer(serializers.Serializer):
    kind = serializers.ListField(
        child=serializers.CharField(max_length=32), required=False, default=list,
        help_text="length_histogram, prompt_results, span, heartbeat, status, log; none: all",
    )
    after = serializers.IntegerField(required=False, help_text="only events with a larger id")
    limit = serializers.IntegerField(min_value=1, max_value=5000, default=500)
    latest = serializers.IntegerField(
        min_value=1, max_value=5000, required=False, help_text="the last N events instead (ignores after/limit)"
    )


def event_json(event: RunEvent) -> dict[str, Any]:
    """The engine event as the engine made it, plus its database id for paging."""
    return {"id": event.pk, **event.payload}


# --- lifecycle: attempts, checkpoints, fork, diff -------------------------------------------


class RunAttemptSerializer(serializers.ModelSerializer):
    class Meta:
        model = RunAttempt
        fields = [
            "number", "worker_host", "worker_pid", "started_at", "ended_at", "outcome", "reason", "resumed_from_step",
        ]  # fmt: skip
        read_only_fields = fields


class CheckpointSerializer(serializers.ModelSerializer):
    deleted = serializers.SerializerMethodField(help_text="removed by the retention policy (the row stays)")

    class Meta:
        model = Checkpoint
        fields = ["id", "step", "path", "metrics", "size_bytes", "created_at", "deleted_at", "deleted"]
        read_only_fields = fields

    def get_deleted(self, checkpoint: Checkpoint) -> bool:
        return checkpoint.deleted_at is not None


class ForkSerializer(serializers.Serializer):
    step = serializers.IntegerField(min_value=0, help_text="a step of the parent that has a checkpoint on disk")
    overrides = serializers.DictField(
        required=False, default=dict, help_text="spec settings laid over the parent's (nested mappings merge)"
    )
    name = serializers.CharField(
        max_length=200, required=False, allow_blank=True, default="",
        help_text='the fork\'s name; default: the overrides\' "name", else "<parent> (fork @<step>)"',
    )
    retention = serializers.DictField(required=False, help_text="retention overrides; default: the parent's policy")


class DiffQuerySerializer(serializers.Serializer):
    a = serializers.IntegerField(help_text="a run id")
    b = serializers.IntegerField(help_text="another run id")


class PromptTextFields(serializers.Serializer):
    """The prompt's text and reference answer (runs.selectors.with_prompt_text)."""

    prompt = serializers.CharField(
        read_only=True, allow_null=True,
        help_text="the text the model was given (a dataset's template applied), at most 4,096 characters; "
        "null when the run reported none",
    )  # fmt: skip
    answer = serializers.CharField(
        read_only=True, allow_null=True, help_text="the reference answer the verifier compares responses with"
    )


class PromptDifficultySerializer(PromptTextFields, serializers.ModelSerializer):
    samples_url = serializers.SerializerMethodField(help_text="this prompt's kept samples, newest step first")

    class Meta:
        model = RunPromptDifficulty
        fields = [
            "prompt_id", "prompt", "answer", "attempts", "successes", "alpha", "beta", "mean", "low", "high",
            "last_step", "allocated", "step", "wall_time", "samples_url",
        ]  # fmt: skip
        read_only_fields = fields
        extra_kwargs = {
            "step": {"help_text": "the step whose difficulty event last wrote the row"},
            "wall_time": {"help_text": "unix seconds of that event: when the prompt was last seen"},
        }

    def get_samples_url(self, row: RunPromptDifficulty) -> str:
        return reverse("api:run-prompt-samples", args=[row.run_id, row.prompt_id])


class SampleSerializer(PromptTextFields, serializers.ModelSerializer):
    class Meta:
        model = RunSample
        fields = [
            "step", "split", "position", "prompt_id", "prompt", "answer", "response", "reward", "length", "status",
            "first_version", "last_version", "wall_time",
        ]  # fmt: skip
        read_only_fields = fields


class HeatmapQuerySerializer(serializers.Serializer):
    by = serializers.ChoiceField(
        choices=HEATMAP_BY, default="difficulty",
        help_text="bucket prompts by the dataset's difficulty, or by their posterior mean in the run now",
    )  # fmt: skip
    buckets = serializers.IntegerField(min_value=1, max_value=100, default=10)
    split = serializers.ChoiceField(choices=["train", "test"], default="train")
    max_columns = serializers.IntegerField(
        min_value=1, max_value=5000, default=500, help_text="more steps are merged, consecutive ones summed"
    )
