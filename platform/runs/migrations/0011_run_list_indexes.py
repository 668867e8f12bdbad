"""Indexes that match the runs list (runs.views.run_list, the runs API): newest first by
(created_at, id), alone, by status and by team, so a page is read in index order from
its keyset cursor (rollyard.pagination) however deep it is. They replace the single
column indexes on created_at, status and team, which each serves.

On PostgreSQL only, a trigram index for the list's search: Django's icontains is
`UPPER(name) LIKE UPPER('%text%')`, so the index is on UPPER(name). It needs the
pg_trgm extension (a trusted extension since PostgreSQL 13: the database's owner may
create it). SQLite keeps the plain scan, and the model does not declare the index, since
a SQLite table rebuild would try to create it."""

import django.db.models.deletion
import django.utils.timezone
from django.db import migrations, models

TRIGRAM_INDEX = "run_name_trigram"


def create_trigram_index(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    schema_editor.execute(f"CREATE INDEX {TRIGRAM_INDEX} ON runs_run USING gin (UPPER(name) gin_trgm_ops)")


def drop_trigram_index(apps, schema_editor):
    # The extension stays: other tables may use it.
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"DROP INDEX IF EXISTS {TRIGRAM_INDEX}")


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0002_drop_drf_authtoken_table"),
        ("runs", "0010_alert_rules_and_email"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="run",
            index=models.Index(fields=["created_at", "id"], name="run_list_newest"),
        ),
        migrations.AddIndex(
            model_name="run",
            index=models.Index(fields=["status", "created_at", "id"], name="run_list_by_status"),
        ),
        migrations.AddIndex(
            model_name="run",
            index=models.Index(fields=["team", "created_at", "id"], name="run_list_by_team"),
        ),
        migrations.AlterField(
            model_name="run",
            name="created_at",
            field=models.DateTimeField(default=django.utils.timezone.now),
        ),
        migrations.AlterField(
            model_name="run",
            name="status",
            field=models.CharField(
                choices=[("queued", "Queued"), ("admitted", "Admitted"), ("running", "Running"),
                         ("succeeded", "Succeeded"), ("failed", "Failed"), ("cancelled", "Cancelled")],
                default="queued",
                max_length=16,
            ),
        ),
        migrations.AlterField(
            model_name="run",
            name="team",
            field=models.ForeignKey(
                db_index=False, on_delete=django.db.models.deletion.PROTECT, related_name="runs", to="accounts.team"
            ),
        ),
        migrations.RunPython(create_trigram_index, drop_trigram_index, elidable=False),
    ]
