"""Metric-threshold alert rules (AlertRule) and email delivery of alerts: an alert names
its rule, keeps webhook and email delivery apart (the webhook's columns renamed), and
records whom it mails. One open alert per (run, kind) now excludes metric alerts, which
are one open per (run, rule)."""

import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('runs', '0009_metric_rollups'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name='AlertRule',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('metric', models.CharField(help_text='a metric name (docs/metrics.md)', max_length=200)),
                ('comparison', models.CharField(choices=[('above', 'above'), ('below', 'below')], max_length=8)),
                ('threshold', models.FloatField()),
                ('consecutive', models.PositiveIntegerField(default=1, help_text='reported steps in a row that must cross')),
                ('emails', models.JSONField(blank=True, default=list)),
                ('created_at', models.DateTimeField(default=django.utils.timezone.now)),
                ('checked_step', models.IntegerField(default=0)),
                ('streak', models.PositiveIntegerField(default=0)),
                ('created_by', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, to=settings.AUTH_USER_MODEL)),
                ('run', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='alert_rules', to='runs.run')),
            ],
            options={
                'ordering': ['run', 'id'],
            },
        ),
        migrations.RemoveConstraint(
            model_name='alert',
            name='alert_one_open_per_run_kind',
        ),
        migrations.RenameField(
            model_name='alert',
            old_name='delivered_at',
            new_name='webhook_delivered_at',
        ),
        migrations.RenameField(
            model_name='alert',
            old_name='delivery_error',
            new_name='webhook_error',
        ),
        migrations.AddField(
            model_name='alert',
            name='email_to',
            field=models.JSONField(blank=True, default=list),
        ),
        migrations.AddField(
            model_name='alert',
            name='email_delivered_at',
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='alert',
            name='email_error',
            field=models.TextField(blank=True, default=''),
        ),
        migrations.AddField(
            model_name='alert',
            name='rule',
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='alerts', to='runs.alertrule'),
        ),
        migrations.AlterField(
            model_name='alert',
            name='kind',
            field=models.CharField(choices=[('dead', 'Dead (heartbeat lost)'), ('stuck', 'Stuck (no step progress)'), ('idle', 'Idle above threshold'), ('metric', 'Metric threshold')], max_length=16),
        ),
        migrations.AddConstraint(
            model_name='alert',
            constraint=models.UniqueConstraint(condition=models.Q(('resolved_at__isnull', True), models.Q(('kind', 'metric'), _negated=True)), fields=('run', 'kind'), name='alert_one_open_per_run_kind'),
        ),
        migrations.AddConstraint(
            model_name='alert',
            constraint=models.UniqueConstraint(condition=models.Q(('resolved_at__isnull', True)), fields=('run', 'rule'), name='alert_one_open_per_run_rule'),
        ),
    ]
