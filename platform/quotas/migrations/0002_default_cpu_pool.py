"""The CPU pool every launch goes to by default, and the allocations of runs that
already exist, so an upgraded installation admits its queued runs and counts the
capacity its running ones hold."""

from django.db import migrations

from quotas.models import DEFAULT_CPU_POOL_SLOTS, DEFAULT_POOL


def create_cpu_pool_and_allocations(apps, schema_editor):
    Pool = apps.get_model("quotas", "Pool")
    Allocation = apps.get_model("quotas", "Allocation")
    Run = apps.get_model("runs", "Run")
    pool, _ = Pool.objects.get_or_create(
        name=DEFAULT_POOL, defaults={"accelerator": "cpu", "capacity": DEFAULT_CPU_POOL_SLOTS, "active": True}
    )
    for run in Run.objects.filter(status__in=["queued", "admitted", "running"]):
        admitted_at = None if run.status == "queued" else (run.started_at or run.created_at)
        Allocation.objects.create(
            run=run, pool=pool, gpus=0, slots=1, priority=0, requested_at=run.created_at, admitted_at=admitted_at
        )


class Migration(migrations.Migration):
    dependencies = [("quotas", "0001_initial")]

    operations = [migrations.RunPython(create_cpu_pool_and_allocations, migrations.RunPython.noop)]
