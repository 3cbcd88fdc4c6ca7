"""The indexes the admin's overview page reads through: created_at with success
and credential_failure beside it (it replaces the plain created_at index, which
served the newest-first lists and pruneattempts, and still does), and the failed
credential checks by time with client_network and username beside them. The new
index is made before the old one goes, so there is always one on created_at.
INCLUDE is PostgreSQL's; SQLite makes plain indexes of the same keys. And the
table of settled hours' summaries the overview reads instead of their rows."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("apikeys", "0001_initial"),
        ("inboxes", "0004_message_session_id"),
        ("smtpgateway", "0011_operator_labels"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="authattempt",
            index=models.Index(
                fields=["created_at"], include=("success", "credential_failure"), name="authattempt_created"
            ),
        ),
        migrations.AlterField(
            model_name="authattempt",
            name="created_at",
            field=models.DateTimeField(),
        ),
        migrations.AddIndex(
            model_name="authattempt",
            index=models.Index(
                condition=models.Q(("credential_failure", True)),
                fields=["created_at"],
                include=("client_network", "username"),
                name="authattempt_failed_recent",
            ),
        ),
        migrations.CreateModel(
            name="AuthHourSummary",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("hour", models.DateTimeField(help_text="The hour's start (UTC).", unique=True)),
                ("counts", models.JSONField(help_text="Attempts by outcome.")),
                (
                    "networks",
                    models.JSONField(help_text="Failed credential checks by client network: the hour's most."),
                ),
                ("usernames", models.JSONField(help_text="Failed credential checks by username: the hour's most.")),
            ],
            options={
                "verbose_name": "AUTH hour summary",
            },
        ),
    ]
