"""Admin pages. Status and telemetry are read-only here: status changes go through the
state machine (the cancel action calls the same service as the API and the run page)."""

import json

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from runs import lifecycle
from runs.models import Alert, AlertRule, Checkpoint, MetricPoint, Run, RunAttempt, RunEvent, RunStatusChange


class RunStatusChangeInline(admin.TabularInline):
    model = RunStatusChange
    extra = 0
    can_delete = False
    fields = readonly_fields = ["at", "from_status", "to_status", "reason"]

    def has_add_permission(self, request: HttpRequest, obj: Run | None = None) -> bool:
        return False


class RunAttemptInline(admin.TabularInline):
    model = RunAttempt
    extra = 0
    can_delete = False
    fields = readonly_fields = [
        "number", "worker_host", "worker_pid", "started_at", "ended_at", "outcome", "resumed_from_step", "reason",
    ]  # fmt: skip

    def has_add_permission(self, request: HttpRequest, obj: Run | None = None) -> bool:
        return False


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    list_display = ["id", "name", "owner", "status", "current_step", "total_steps", "created_at", "finished_at"]
    list_filter = ["status"]
    search_fields = ["name", "owner__username", "owner__email"]
    list_select_related = ["owner"]
    inlines = [RunStatusChangeInline, RunAttemptInline]
    actions = ["cancel_runs"]
    fields = [
        "name", "owner", "status", "status_reason", "cancel_requested",
        "created_at", "started_at", "finished_at", "last_heartbeat_at",
        "current_step", "total_steps", "summary", "resolved_spec",
    ]  # fmt: skip
    readonly_fields = [field for field in fields if field != "name"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Runs are launched through create_run (UI or API), which validates and enqueues.
        return False

    @admin.display(description="resolved spec")
    def resolved_spec(self, run: Run) -> str:
        return format_html("<pre>{}</pre>", json.dumps(run.spec, indent=2))

    @admin.action(description="Cancel selected runs")
    def cancel_runs(self, request: HttpRequest, queryset: QuerySet[Run]) -> None:
        for run in queryset:
            try:
                lifecycle.request_cancel(request.user, run)
            except lifecycle.RunError as exc:
                self.message_user(request, str(exc), messages.WARNING)


class _ReadOnlyAdmin(admin.ModelAdmin):
    """Telemetry is append-only: the engine writes it, nobody edits it."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


@admin.register(MetricPoint)
class MetricPointAdmin(_ReadOnlyAdmin):
    list_display = ["run", "name", "step", "value", "wall_time"]
    # No list_filter on name: DISTINCT over millions of points would stall the page.
    search_fields = ["=run__id", "name"]
    list_select_related = ["run"]


@admin.register(RunEvent)
class RunEventAdmin(_ReadOnlyAdmin):
    list_display = ["id", "run", "kind", "step", "wall_time"]
    search_fields = ["=run__id", "=kind"]
    list_select_related = ["run"]


@admin.register(Checkpoint)
class CheckpointAdmin(_ReadOnlyAdmin):
    """Retention deletes checkpoints (runs.retention); rows stay as history."""

    list_display = ["run", "step", "size_bytes", "created_at", "deleted_at", "path"]
    search_fields = ["=run__id"]
    list_select_related = ["run"]


@admin.register(Alert)
class AlertAdmin(_ReadOnlyAdmin):
    list_display = ["run", "kind", "opened_at", "resolved_at", "webhook_delivered_at", "email_delivered_at", "message"]
    list_filter = ["kind"]
    search_fields = ["=run__id"]
    list_select_related = ["run"]


@admin.register(AlertRule)
class AlertRuleAdmin(_ReadOnlyAdmin):
    """Rules are added and deleted through the API (runs.alerts checks who may)."""

    list_display = ["run", "metric", "comparison", "threshold", "consecutive", "checked_step", "created_by"]
    search_fields = ["=run__id", "metric"]
    list_select_related = ["run", "created_by"]
