"""On SQLite, make ``raw`` the last column of the message table.

The gateway writes a large message into a ``zeroblob`` placeholder with
incremental blob I/O (``smtpgateway.storage.message_inserts``). SQLite builds the zeros in memory
unless the blob is the record's last column, so with ``raw`` in the middle a
10 MiB message cost 20 MiB more at its peak. Django has no operation to reorder
columns; its SQLite schema editor rebuilds a table (copying every row) with an
altered field taken from its place, so "altering" ``raw`` to a fresh copy of
itself does exactly this (``_remake_table``, a private method, stable since
Django 1.x; ``tests/test_submission.py`` checks the column order). PostgreSQL stores large values out of line, so column order does not
matter there and nothing is done.
"""

from django.db import migrations


def move_raw_last(apps, schema_editor):  # type: ignore[no-untyped-def]
    if schema_editor.connection.vendor != "sqlite":
        return
    message = apps.get_model("inboxes", "Message")
    raw = message._meta.get_field("raw")
    # A fresh copy: the rebuilt table orders its fields by creation, so the copy,
    # created last, becomes the last column.
    moved = raw.clone()
    moved.set_attributes_from_name("raw")
    schema_editor._remake_table(message, alter_fields=[(raw, moved)])


class Migration(migrations.Migration):
    dependencies = [("inboxes", "0001_initial")]

    operations = [migrations.RunPython(move_raw_last, migrations.RunPython.noop)]
