"""One metric point per (run, name, step), and attempts that count their event batches.

Before the constraint, duplicates are removed: a superseded driver kept writing, or a
resumed attempt re-reported steps, so some (run, name, step) hold several points. The
newest row (highest id: the latest attempt's, or the latest re-send) is the one kept, as
record_events keeps it from now on. The old plain index goes after the unique one exists,
so reads stay indexed throughout.
"""

from django.db import migrations, models
from django.db.models import Max


def keep_the_newest_point_of_each_step(apps, schema_editor):
    MetricPoint = apps.get_model("runs", "MetricPoint")
    newest = MetricPoint.objects.values("run_id", "name", "step").annotate(keep=Max("id")).values("keep")
    MetricPoint.objects.exclude(id__in=newest).delete()


class Migration(migrations.Migration):

    dependencies = [
        ("runs", "0005_lifecycle"),
    ]

    operations = [
        migrations.RunPython(keep_the_newest_point_of_each_step, migrations.RunPython.noop, elidable=True),
        migrations.AddConstraint(
            model_name="metricpoint",
            constraint=models.UniqueConstraint(fields=("run", "name", "step"), name="metricpoint_one_per_run_name_step"),
        ),
        migrations.RemoveIndex(
            model_name="metricpoint",
            name="metricpoint_run_name_step",
        ),
        migrations.AddField(
            model_name="runattempt",
            name="batches_recorded",
            field=models.PositiveIntegerField(default=0),
        ),
    ]
