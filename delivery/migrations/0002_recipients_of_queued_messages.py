"""Messages accepted before delivery existed get their recipients: each queued
message's envelope recipients, due at once (in their order, each once)."""

from django.db import migrations

BATCH = 1000


def add_recipients(apps, schema_editor):  # type: ignore[no-untyped-def]
    message_model = apps.get_model("inboxes", "Message")
    recipient_model = apps.get_model("delivery", "Recipient")
    queued = message_model.objects.filter(status="queued").exclude(recipients__isnull=False)
    rows = []
    for queue_id, envelope_to, created_at in queued.values_list("queue_id", "envelope_to", "created_at").iterator():
        for address in dict.fromkeys(envelope_to or []):
            rows.append(recipient_model(message_id=queue_id, address=address, next_attempt_at=created_at))
        if len(rows) >= BATCH:
            recipient_model.objects.bulk_create(rows)
            rows = []
    recipient_model.objects.bulk_create(rows)


class Migration(migrations.Migration):
    dependencies = [("delivery", "0001_initial"), ("inboxes", "0003_alter_message_status")]

    operations = [migrations.RunPython(add_recipients, migrations.RunPython.noop)]
