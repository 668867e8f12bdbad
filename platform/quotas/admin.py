"""Site admins manage pools and quotas here; saves go through quotas.services, like the API's."""

from django.contrib import admin
from django.http import HttpRequest

from quotas import services
from quotas.models import Allocation, Pool, Quota


class LimitsAdmin(admin.ModelAdmin):
    def save_model(self, request: HttpRequest, obj: Pool | Quota, form, change: bool) -> None:
        services.save_pool_or_quota(request.user, obj)

    def delete_model(self, request: HttpRequest, obj: Pool | Quota) -> None:
        services.delete_pool_or_quota(request.user, obj)


@admin.register(Pool)
class PoolAdmin(LimitsAdmin):
    list_display = ["name", "accelerator", "gpu_type", "capacity", "active"]
    list_filter = ["accelerator", "active"]


@admin.register(Quota)
class QuotaAdmin(LimitsAdmin):
    list_display = ["pool", "team", "user", "max_concurrent_gpus", "max_gpus_per_run", "gpu_hours_per_period", "period_days"]
    list_filter = ["pool"]
    autocomplete_fields = ["team", "user"]


@admin.register(Allocation)
class AllocationAdmin(admin.ModelAdmin):
    """The ledger, read-only: admission and the runs' state machine write it."""

    list_display = ["run", "pool", "gpus", "slots", "priority", "requested_at", "admitted_at", "released_at"]
    list_filter = ["pool"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Allocation | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Allocation | None = None) -> bool:
        return False
