"""Pools, quotas, the queue and usage on the wire."""

from datetime import timedelta

from django.contrib.auth import get_user_model
from django.utils import timezone
from rest_framework import serializers

from accounts.models import Team
from quotas.admission import gpu_hours_used
from quotas.models import Allocation, Pool, Quota

USAGE_DEFAULT_DAYS = 30


class PoolSerializer(serializers.ModelSerializer):
    unit = serializers.CharField(read_only=True, help_text='what capacity counts: "GPUs" or "run slots"')
    in_use = serializers.SerializerMethodField(help_text="capacity held by admitted and running runs")
    queued = serializers.SerializerMethodField(help_text="runs waiting in the pool's queue")

    class Meta:
        model = Pool
        fields = ["id", "name", "accelerator", "gpu_type", "capacity", "active", "unit", "in_use", "queued"]

    def get_in_use(self, pool: Pool) -> int:
        held = Allocation.objects.filter(pool=pool, admitted_at__isnull=False, released_at__isnull=True)
        return sum(held.values_list("slots", flat=True))

    def get_queued(self, pool: Pool) -> int:
        return Allocation.objects.filter(pool=pool, admitted_at__isnull=True, released_at__isnull=True).count()


class QuotaSerializer(serializers.ModelSerializer):
    pool = serializers.SlugRelatedField(slug_field="name", queryset=Pool.objects.all())
    team = serializers.SlugRelatedField(slug_field="name", queryset=Team.objects.all(), required=False, allow_null=True)
    user = serializers.SlugRelatedField(
        slug_field="username", queryset=get_user_model().objects.all(), required=False, allow_null=True
    )
    gpu_hours_used = serializers.SerializerMethodField(help_text="GPU-hours used in the current period (rolling)")

    class Meta:
        model = Quota
        fields = [
            "id", "pool", "team", "user", "max_concurrent_gpus", "max_gpus_per_run",
            "gpu_hours_per_period", "period_days", "gpu_hours_used",
        ]  # fmt: skip
        # The model's constraints are checked once, by the service's full_clean().
        validators = []

    def get_gpu_hours_used(self, quota: Quota) -> float:
        return round(gpu_hours_used(quota, timezone.now()), 4)


class QueueEntrySerializer(serializers.Serializer):
    run_id = serializers.IntegerField()
    run_name = serializers.CharField()
    owner = serializers.CharField()
    team = serializers.CharField()
    pool = serializers.CharField()
    gpus = serializers.IntegerField()
    priority = serializers.IntegerField()
    requested_at = serializers.DateTimeField()
    position = serializers.IntegerField(help_text="1-based place in the pool's queue (priority, then age)")
    ahead = serializers.IntegerField(help_text="runs ahead of it in the pool, any team's")
    reason = serializers.CharField(help_text="why it waits")
    fits_now = serializers.BooleanField(help_text="the next admission sweep starts it")


class QueueQuerySerializer(serializers.Serializer):
    pool = serializers.CharField(required=False, help_text="one pool's queue only")


class UsageQuerySerializer(serializers.Serializer):
    pool = serializers.CharField(required=False)
    since = serializers.DateTimeField(required=False, help_text=f"default: {USAGE_DEFAULT_DAYS} days before `until`")
    until = serializers.DateTimeField(required=False, help_text="default: now")

    def validate(self, attrs: dict) -> dict:
        until = attrs.get("until") or timezone.now()
        try:
            since = attrs.get("since") or until - timedelta(days=USAGE_DEFAULT_DAYS)
        except OverflowError:
            raise serializers.ValidationError({"until": ["too early to look back from"]}) from None
        if since >= until:
            raise serializers.ValidationError({"since": [f"must be before until ({until.isoformat()})"]})
        return {**attrs, "since": since, "until": until}


class UsageRowSerializer(serializers.Serializer):
    pool = serializers.CharField()
    team = serializers.CharField()
    user = serializers.CharField(allow_null=True)
    gpu_hours = serializers.FloatField()
    runs = serializers.IntegerField()
