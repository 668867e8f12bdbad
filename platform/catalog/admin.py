"""Read-only admin: datasets and presets change only through catalog.services (a
dataset's file and rows must come and go together; preset versions never change)."""

from django.contrib import admin

from catalog.models import Dataset, Preset, RunInputs


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Dataset)
class DatasetAdmin(ReadOnlyAdmin):
    list_display = ["name", "team", "format", "row_count", "skipped_row_count", "size_bytes", "created_by", "created_at"]
    list_filter = ["team", "format", "registered"]
    search_fields = ["name", "description"]


@admin.register(Preset)
class PresetAdmin(ReadOnlyAdmin):
    list_display = ["name", "version", "kind", "team", "created_by", "created_at"]
    list_filter = ["team", "kind"]
    search_fields = ["name", "description"]


@admin.register(RunInputs)
class RunInputsAdmin(ReadOnlyAdmin):
    list_display = ["run", "dataset"]
