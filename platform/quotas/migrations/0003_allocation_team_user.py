"""Allocations name the team and user whose quotas they count against, copied from their
runs, so that admission and usage read the ledger without joining the runs."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


def copy_team_and_user(apps, schema_editor):
    Allocation = apps.get_model("quotas", "Allocation")
    Run = apps.get_model("runs", "Run")
    for run in Run.objects.filter(allocations__isnull=False).distinct().only("pk", "team_id", "owner_id"):
        Allocation.objects.filter(run_id=run.pk).update(team_id=run.team_id, user_id=run.owner_id)
    if schema_editor.connection.vendor == "postgresql":
        # The updates queued deferred foreign-key checks; PostgreSQL refuses the ALTER
        # TABLE that follows while they are pending.
        schema_editor.execute("SET CONSTRAINTS ALL IMMEDIATE")


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0001_initial"),
        ("quotas", "0002_default_cpu_pool"),
        ("runs", "0004_run_team_required"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name="allocation",
            name="team",
            field=models.ForeignKey(
                null=True, on_delete=django.db.models.deletion.PROTECT, related_name="allocations", to="accounts.team"
            ),
        ),
        migrations.AddField(
            model_name="allocation",
            name="user",
            field=models.ForeignKey(
                null=True, on_delete=django.db.models.deletion.PROTECT, related_name="allocations", to=settings.AUTH_USER_MODEL
            ),
        ),
        migrations.RunPython(copy_team_and_user, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="allocation",
            name="team",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.PROTECT, related_name="allocations", to="accounts.team"
            ),
        ),
        migrations.AlterField(
            model_name="allocation",
            name="user",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.PROTECT, related_name="allocations", to=settings.AUTH_USER_MODEL
            ),
        ),
    ]
