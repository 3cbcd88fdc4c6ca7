# AuthAttempt keeps only the indexes something reads through (see the model).

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("apikeys", "0001_initial"),
        ("inboxes", "0002_message_raw_last_column"),
        ("smtpgateway", "0005_unindexed_flags"),
    ]

    operations = [
        migrations.AlterField(
            model_name="authattempt",
            name="reason",
            field=models.CharField(
                choices=[
                    ("OK", "OK"),
                    ("INVALID_INBOX_FORMAT", "INVALID_INBOX_FORMAT"),
                    ("INVALID_API_KEY_FORMAT", "INVALID_API_KEY_FORMAT"),
                    ("API_KEY_NOT_FOUND", "API_KEY_NOT_FOUND"),
                    ("API_KEY_REVOKED", "API_KEY_REVOKED"),
                    ("API_KEY_EXPIRED", "API_KEY_EXPIRED"),
                    ("INSUFFICIENT_PERMISSIONS", "INSUFFICIENT_PERMISSIONS"),
                    ("INBOX_NOT_FOUND", "INBOX_NOT_FOUND"),
                    ("INBOX_DISABLED", "INBOX_DISABLED"),
                    ("INBOX_SUSPENDED", "INBOX_SUSPENDED"),
                    ("ORGANIZATION_MISMATCH", "ORGANIZATION_MISMATCH"),
                    ("MALFORMED", "MALFORMED"),
                    ("ABORTED", "ABORTED"),
                    ("UNSUPPORTED_MECHANISM", "UNSUPPORTED_MECHANISM"),
                    ("ENCRYPTION_REQUIRED", "ENCRYPTION_REQUIRED"),
                    ("RATE_LIMITED", "RATE_LIMITED"),
                    ("TEMPORARY_FAILURE", "TEMPORARY_FAILURE"),
                ],
                max_length=32,
            ),
        ),
        migrations.AlterField(
            model_name="authattempt",
            name="remote_addr",
            field=models.GenericIPAddressField(blank=True, null=True),
        ),
        migrations.AlterField(
            model_name="authattempt",
            name="session_id",
            field=models.CharField(help_text="Also in the gateway's log lines.", max_length=32),
        ),
        migrations.AddIndex(
            model_name="authattempt",
            index=models.Index(fields=["reason"], name="authattempt_reason"),
        ),
    ]
