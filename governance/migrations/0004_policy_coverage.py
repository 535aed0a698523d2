from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("governance", "0003_roles_and_audit_guards"),
    ]

    operations = [
        migrations.AddField(
            model_name="policyversion",
            name="coverage",
            field=models.JSONField(blank=True, default=dict),
        ),
    ]
