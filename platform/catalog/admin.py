"""Read-mostly admin: datasets and presets change through catalog.services (uploads,
immutable preset versions), so the admin lists them and lets staff delete them."""

from django.contrib import admin

from catalog.models import Dataset, Preset, RunInputs


@admin.register(Dataset)
class DatasetAdmin(admin.ModelAdmin):
    list_display = ["name", "team", "format", "row_count", "skipped_row_count", "size_bytes", "created_by", "created_at"]
    list_filter = ["team", "format", "registered"]
    search_fields = ["name", "description"]
    readonly_fields = [field.name for field in Dataset._meta.fields]


@admin.register(Preset)
class PresetAdmin(admin.ModelAdmin):
    list_display = ["name", "version", "kind", "team", "created_by", "created_at"]
    list_filter = ["team", "kind"]
    search_fields = ["name", "description"]
    readonly_fields = [field.name for field in Preset._meta.fields]


@admin.register(RunInputs)
class RunInputsAdmin(admin.ModelAdmin):
    list_display = ["run", "dataset"]
    readonly_fields = ["run", "dataset", "presets"]
