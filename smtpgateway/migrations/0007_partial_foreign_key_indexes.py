# The foreign keys' indexes leave out NULL (see the model): a failed AUTH that
# found no key no longer writes three index entries nobody reads.

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("apikeys", "0001_initial"),
        ("inboxes", "0002_message_raw_last_column"),
        ("smtpgateway", "0006_read_indexes_only"),
    ]

    operations = [
        # Only the indexes change. AlterField would have SQLite copy the whole table
        # three times to drop them, so the database gets the DROP INDEX alone.
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="authattempt",
                    name="api_key",
                    field=models.ForeignKey(
                        blank=True,
                        db_constraint=False,
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to="apikeys.apikey",
                    ),
                ),
                migrations.AlterField(
                    model_name="authattempt",
                    name="inbox",
                    field=models.ForeignKey(
                        blank=True,
                        db_constraint=False,
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to="inboxes.inbox",
                    ),
                ),
                migrations.AlterField(
                    model_name="authattempt",
                    name="organization",
                    field=models.ForeignKey(
                        blank=True,
                        db_constraint=False,
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to="inboxes.organization",
                    ),
                ),
            ],
            database_operations=[
                migrations.RunSQL(
                    'DROP INDEX IF EXISTS "smtpgateway_authattempt_api_key_id_b2aa15e2"',
                    reverse_sql='CREATE INDEX "smtpgateway_authattempt_api_key_id_b2aa15e2" ON "smtpgateway_authattempt" ("api_key_id")',
                ),
                migrations.RunSQL(
                    'DROP INDEX IF EXISTS "smtpgateway_authattempt_inbox_id_0905bf70"',
                    reverse_sql='CREATE INDEX "smtpgateway_authattempt_inbox_id_0905bf70" ON "smtpgateway_authattempt" ("inbox_id")',
                ),
                migrations.RunSQL(
                    'DROP INDEX IF EXISTS "smtpgateway_authattempt_organization_id_646b5f8e"',
                    reverse_sql='CREATE INDEX "smtpgateway_authattempt_organization_id_646b5f8e" ON "smtpgateway_authattempt" ("organization_id")',
                ),
            ],
        ),
        migrations.AddIndex(
            model_name="authattempt",
            index=models.Index(
                condition=models.Q(("inbox__isnull", False)), fields=["inbox"], name="authattempt_inbox"
            ),
        ),
        migrations.AddIndex(
            model_name="authattempt",
            index=models.Index(
                condition=models.Q(("api_key__isnull", False)), fields=["api_key"], name="authattempt_api_key"
            ),
        ),
        migrations.AddIndex(
            model_name="authattempt",
            index=models.Index(
                condition=models.Q(("organization__isnull", False)),
                fields=["organization"],
                name="authattempt_organization",
            ),
        ),
    ]
