# Drops the indexes on AuthAttempt's low-cardinality flags (see the model).

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("smtpgateway", "0004_credential_failure_flag"),
    ]

    operations = [
        migrations.AlterField(
            model_name="authattempt",
            name="encrypted",
            field=models.BooleanField(default=False, help_text="Whether the session was under TLS."),
        ),
        migrations.AlterField(
            model_name="authattempt",
            name="mechanism",
            field=models.CharField(blank=True, max_length=32),
        ),
        migrations.AlterField(
            model_name="authattempt",
            name="success",
            field=models.BooleanField(),
        ),
    ]
