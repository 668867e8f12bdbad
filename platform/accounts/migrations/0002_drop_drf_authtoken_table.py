"""DRF's authtoken app is gone: API tokens are accounts.ApiToken now. Its table held
token secrets in clear, so databases made before the switch drop it (a no-op elsewhere)."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("accounts", "0001_initial")]

    operations = [
        migrations.RunSQL("DROP TABLE IF EXISTS authtoken_token", reverse_sql=migrations.RunSQL.noop),
        migrations.RunSQL(
            "DELETE FROM django_migrations WHERE app = 'authtoken'", reverse_sql=migrations.RunSQL.noop
        ),
    ]
