"""Shapes of runs and telemetry on the wire (REST and the websocket's hello)."""

from typing import Any

from django.urls import reverse
from rest_framework import serializers

from runs.models import Run, RunEvent


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
        fields = [*RunSerializer.Meta.fields, "spec"]
        read_only_fields = fields


class RunCreateSerializer(serializers.Serializer):
    spec = serializers.JSONField(help_text="a run spec (see /api/spec/schema/); omitted settings take defaults")
    name = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
    team = serializers.CharField(
        max_length=100, required=False, help_text="the team's id or name (member role needed); default: your first team"
    )


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
