"""Runs stored before teams existed go to their owner's first team, or to a personal
team made for the owner (the same rule as accounts.services.default_team)."""

from django.db import migrations


def assign_teams(apps, schema_editor):
    Run = apps.get_model("runs", "Run")
    Team = apps.get_model("accounts", "Team")
    Membership = apps.get_model("accounts", "Membership")
    for owner_id in Run.objects.filter(team__isnull=True).values_list("owner_id", flat=True).distinct():
        membership = Membership.objects.filter(user_id=owner_id).order_by("team__name").first()
        if membership is not None:
            team_id = membership.team_id
        else:
            owner = Run._meta.get_field("owner").related_model.objects.get(pk=owner_id)
            name = owner.username if not Team.objects.filter(name=owner.username).exists() else f"{owner.username}-{owner_id}"
            team_id = Team.objects.create(name=name).pk
            Membership.objects.create(user_id=owner_id, team_id=team_id, role="admin")
        Run.objects.filter(owner_id=owner_id, team__isnull=True).update(team_id=team_id)


class Migration(migrations.Migration):
    dependencies = [("runs", "0002_run_team_and_admitted"), ("accounts", "0001_initial")]

    operations = [migrations.RunPython(assign_teams, migrations.RunPython.noop)]
