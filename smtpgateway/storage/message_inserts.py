"""Writing messages without copying a large one.

A message is stored as its ``Received:`` header followed by the body as
received, in ``Message.raw``. Joining the two, then handing the result to the
database driver, would hold a large message three or four times over (the join;
SQLite's copy of a bound parameter and the record it builds from it; psycopg's
hex text of a ``bytea``). So a message of ``LARGE_MESSAGE`` bytes or more is
written without a join:

* SQLite: the row is inserted with ``zeroblob(size)``, then the header and the
  body are written into it through incremental blob I/O, a chunk at a time.
* PostgreSQL: the row goes in with ``COPY ... FROM STDIN (FORMAT BINARY)``, the
  body in chunks after the header, so nothing is joined or turned into text (a
  bound parameter would sit whole in libpq's output buffer as well).

Smaller messages are inserted together, with one ``executemany``. Either way the
write is part of the committer's transaction: the ``250`` still comes after it
has committed.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.db import connections
from django.db.models import BinaryField, Func, Value
from django.utils import timezone as django_timezone

from delivery.models import Recipient
from inboxes.models import Message
from smtpgateway.storage.inserts import adapting_only, insert_alike, insert_rows

LARGE_MESSAGE = 256 * 1024
CHUNK = 256 * 1024
# The fields Django must adapt (JSON, binary, dates and auto_now_add); the others
# are strings and integers the drivers take as they are.
_message_value = adapting_only("envelope_to", "raw", "created_at")


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A message to store: its row without ``raw``, and the two parts of ``raw``."""

    row: Message
    received: bytes
    content: bytes | bytearray
    organization_pk: int = 0  # the inbox's (smtpgateway.storage.sending_limits tallies it)

    @property
    def large(self) -> bool:
        return len(self.content) >= LARGE_MESSAGE


def insert_messages(messages: list[NewMessage]) -> None:
    """INSERT every message and its recipients, due for delivery now (inside the
    caller's transaction: a 250 means both are committed)."""
    small = [message for message in messages if not message.large]
    for message in small:
        message.row.raw = message.received + message.content
    insert_rows(Message, [message.row for message in small], _message_value)
    for message in messages:
        if message.large:
            _insert_large(message)
    # The rows differ only in message and address (strings) and when they are due (now, adapted once).
    due = connections[Recipient.objects.db].ops.adapt_datetimefield_value(django_timezone.now())
    insert_alike(
        Recipient,
        ("message", "address", "next_attempt_at"),
        ((message.row.queue_id, address, due) for message in messages for address in message.row.envelope_to),
    )


def _insert_large(message: NewMessage) -> None:
    connection = connections[Message.objects.db]
    # These paths use the driver's own objects (a blob, a COPY); wrapped, so that
    # a failure is a Django DatabaseError like any other (451, records kept).
    with connection.wrap_database_errors:
        if connection.vendor == "sqlite":
            _insert_large_sqlite(message, connection)
        elif connection.vendor == "postgresql":
            _insert_large_postgresql(message, connection)
        else:  # no way around the join known for other databases
            message.row.raw = message.received + message.content
            message.row.save(force_insert=True)


def _insert_large_sqlite(message: NewMessage, connection) -> None:  # type: ignore[no-untyped-def]
    size = len(message.received) + len(message.content)
    message.row.raw = Func(Value(size), function="zeroblob", output_field=BinaryField())
    message.row.save(force_insert=True)
    with connection.connection.blobopen(Message._meta.db_table, "raw", message.row.pk) as blob:
        blob.write(message.received)
        body = memoryview(message.content)
        for start in range(0, len(body), CHUNK):
            blob.write(body[start : start + CHUNK])


# COPY ... (FORMAT BINARY): a signature, flags and header extension; each row a
# field count, then per field its length and bytes; -1 as the end.
_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\0" + struct.pack(">ii", 0, 0)
_COPY_END = struct.pack(">h", -1)
_POSTGRES_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_COPY_COLUMNS = (
    "queue_id",
    "inbox_id",
    "envelope_from",
    "envelope_to",
    "size",
    "message_id",
    "subject",
    "status",
    "created_at",
    "session_id",
    "raw",
)


def _insert_large_postgresql(message: NewMessage, connection) -> None:  # type: ignore[no-untyped-def]
    row = message.row
    row.created_at = django_timezone.now()
    since_epoch = row.created_at - _POSTGRES_EPOCH
    fields = [
        row.queue_id.encode(),
        struct.pack(">q", row.inbox_id),  # bigint
        row.envelope_from.encode(),
        b"\x01" + json.dumps(row.envelope_to).encode(),  # jsonb, format version 1
        struct.pack(">i", row.size),  # integer
        row.message_id.encode(),
        row.subject.encode(),
        row.status.encode(),
        struct.pack(">q", since_epoch // timedelta(microseconds=1)),  # timestamptz: µs since 2000
        row.session_id.encode(),
    ]
    head = _COPY_SIGNATURE + struct.pack(">h", len(_COPY_COLUMNS))
    head += b"".join(struct.pack(">i", len(field)) + field for field in fields)
    head += struct.pack(">i", len(message.received) + len(message.content)) + message.received
    quote = connection.ops.quote_name
    sql = f"COPY {quote(Message._meta.db_table)} ({', '.join(map(quote, _COPY_COLUMNS))}) FROM STDIN (FORMAT BINARY)"
    # Django's cursors would send the bytea as hex text in one piece; COPY takes the
    # body in chunks, in the caller's transaction.
    with connection.connection.cursor() as cursor, cursor.copy(sql) as copy:
        copy.write(head)
        body = memoryview(message.content)
        for start in range(0, len(body), CHUNK):
            copy.write(body[start : start + CHUNK])
        copy.write(_COPY_END)
