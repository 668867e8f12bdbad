"""Shapes of datasets, prompt records and presets on the wire."""

import json
from typing import Any

from django.urls import reverse
from rest_framework import serializers

from catalog.models import Dataset, Preset, PresetKind, PromptRecord, PromptRunDifficulty, PromptStat
from engine.data import ANSWER_FORMATS


class DatasetSerializer(serializers.ModelSerializer):
    team = serializers.CharField(source="team.name", read_only=True)
    created_by = serializers.CharField(source="created_by.get_username", read_only=True, default=None)
    reference = serializers.CharField(read_only=True, help_text='how a run spec names it: {"dataset": {"catalog": ...}}')
    url = serializers.SerializerMethodField(help_text="the dataset's page")
    api_url = serializers.SerializerMethodField()

    class Meta:
        model = Dataset
        fields = [
            "id", "team", "name", "reference", "description", "format", "columns", "answer_format",
            "registered", "original_filename", "size_bytes", "row_count", "split_counts",
            "skipped_row_count", "skipped_rows", "created_by", "created_at", "url", "api_url",
        ]  # fmt: skip
        read_only_fields = fields

    def get_url(self, dataset: Dataset) -> str:
        return reverse("catalog:dataset-detail", args=[dataset.pk])

    def get_api_url(self, dataset: Dataset) -> str:
        return reverse("catalog-api:dataset-detail", args=[dataset.pk])


class DatasetCreateSerializer(serializers.Serializer):
    """Multipart with a `file`, or (JSON or form) with a server `path` to register."""

    name = serializers.CharField(max_length=100)
    team = serializers.CharField(max_length=100, required=False, help_text="team name; default: your first team")
    description = serializers.CharField(required=False, allow_blank=True, default="")
    file = serializers.FileField(required=False, help_text="a .jsonl, .csv or .parquet file")
    path = serializers.CharField(required=False, max_length=4096, help_text="a server path under ROLLYARD_DATASET_ROOTS")
    format = serializers.CharField(required=False, help_text="jsonl, csv, parquet, hf_disk; default: from the suffix")
    columns = serializers.JSONField(
        required=False, help_text='role → column, e.g. {"prompt": "question", "answer": "answer", "split": "split"}'
    )
    answer_format = serializers.ChoiceField(choices=ANSWER_FORMATS, required=False, default="plain")
    skip_bad_rows = serializers.BooleanField(
        required=False, default=False, help_text="store the good rows and report the bad ones instead of refusing"
    )

    def validate_columns(self, columns: Any) -> dict:
        # In a multipart form the mapping arrives as a JSON string.
        if isinstance(columns, str):
            try:
                columns = json.loads(columns)
            except ValueError as exc:
                raise serializers.ValidationError(f"not valid JSON: {exc}") from None
        if not isinstance(columns, dict):
            raise serializers.ValidationError("expected a mapping of role → column name")
        return columns

    def validate(self, data: dict) -> dict:
        if ("file" in data) == ("path" in data):
            raise serializers.ValidationError("send either a file to upload or a server path to register, not both")
        return data


class PromptRecordSerializer(serializers.ModelSerializer):
    attempts = serializers.IntegerField(read_only=True, allow_null=True)
    successes = serializers.IntegerField(read_only=True, allow_null=True)
    pass_rate = serializers.FloatField(read_only=True, allow_null=True, help_text="over every run; null: never tried")
    runs_seen = serializers.IntegerField(read_only=True, help_text="runs whose difficulty store holds the prompt")
    last_seen_at = serializers.DateTimeField(
        read_only=True, allow_null=True, help_text="when a run last reported its difficulty; null: never"
    )

    class Meta:
        model = PromptRecord
        fields = [
            "id", "position", "prompt_id", "prompt", "answer", "split", "difficulty",
            "attempts", "successes", "pass_rate", "runs_seen", "last_seen_at",
        ]  # fmt: skip
        read_only_fields = fields


class PromptRunDifficultySerializer(serializers.ModelSerializer):
    class Meta:
        model = PromptRunDifficulty
        fields = ["run", "attempts", "successes", "alpha", "beta", "mean", "low", "high", "last_step", "seen_at"]
        read_only_fields = fields


class PromptStatSerializer(serializers.ModelSerializer):
    class Meta:
        model = PromptStat
        fields = ["run", "step", "split", "attempts", "successes", "mean_length"]
        read_only_fields = fields


class PresetSerializer(serializers.ModelSerializer):
    team = serializers.CharField(source="team.name", read_only=True)
    created_by = serializers.CharField(source="created_by.get_username", read_only=True, default=None)
    reference = serializers.CharField(read_only=True, help_text='how a run spec names it: {"algorithm": {"preset": ...}}')
    api_url = serializers.SerializerMethodField()

    class Meta:
        model = Preset
        fields = ["id", "team", "kind", "name", "version", "reference", "description", "body", "created_by", "created_at", "api_url"]
        read_only_fields = fields

    def get_api_url(self, preset: Preset) -> str:
        return reverse("catalog-api:preset-detail", args=[preset.pk])


class PresetCreateSerializer(serializers.Serializer):
    team = serializers.CharField(max_length=100, required=False, help_text="team name; default: your first team")
    kind = serializers.ChoiceField(choices=PresetKind.choices)
    name = serializers.CharField(max_length=100)
    description = serializers.CharField(required=False, allow_blank=True, default="")
    body = serializers.JSONField(help_text="the spec section, e.g. an algorithm section; unset fields take defaults")


class PresetVersionSerializer(serializers.Serializer):
    description = serializers.CharField(required=False, allow_blank=True)
    body = serializers.JSONField()
