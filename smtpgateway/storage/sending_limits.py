"""Daily recipient limits, counted in the database so that they hold across
processes and hosts exactly.

What counts toward an inbox's (or its organization's) limit is every recipient
of its messages accepted in the last 24 hours, summed from per-minute
``SendingTally`` rows (at most 1,440 per day, however much was sent, so a check
costs the same at the day's end as at its start; bounces, sent by the delivery
worker, are not tallied), and every recipient a RCPT has accepted for a message
not committed yet (a ``RecipientHold``). Counting in whole minutes, a recipient
counts for up to a minute longer than 24 hours, never shorter.

A RCPT takes a hold in a transaction that on PostgreSQL first locks the
organization's and the inbox's rows (on SQLite, every write transaction begins
IMMEDIATE, holding the database's one write lock: ``agentmail_site/settings.py``):
so two gateways holding for one inbox take turns, and each counts the other's
hold. Tallies and holds are summed in one statement, one snapshot, and a message
committing meanwhile (its holds deleted, its tallies raised, in one transaction)
is counted once either way.

A hold lives for ``HOLD_LIFETIME`` at most: a process that dies with one leaves
it counted that long, no longer.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import connections

from inboxes.models import Inbox, Organization, RecipientHold, SendingTally
from smtpgateway.storage.inserts import execute, placeholder
from smtpgateway.storage.jobs import Held, HoldJob, LimitReached

WINDOW = timedelta(hours=24)
HOLD_LIFETIME = timedelta(minutes=30)
MINUTE = timedelta(minutes=1)
INBOX, ORGANIZATION = SendingTally.Scope.INBOX.value, SendingTally.Scope.ORGANIZATION.value


def minute_of(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def take_hold(job: HoldJob, now: datetime) -> Held | LimitReached:
    """Hold room for one recipient, or say which limit it would pass (inside the
    caller's transaction). Every RCPT of a limited inbox runs this: its
    statements are written once (``_statements``), not built by the ORM each
    time, which cost several times the database's own work."""
    connection = connections[RecipientHold.objects.db]
    statements = _statements(connection.vendor)
    adapt = connection.ops.adapt_datetimefield_value
    with connection.cursor() as cursor:
        if statements.lock:
            # In one order (organization, then inbox), so holds never deadlock;
            # NO KEY UPDATE does not wait for the key-share locks of Message inserts.
            cursor.execute(statements.lock, [job.organization_pk, job.inbox_pk])
        cursor.execute(
            statements.insert_hold,
            [job.inbox_pk, job.organization_pk, job.session_id, adapt(now), adapt(now + HOLD_LIFETIME)],
        )
        hold_id: int = cursor.fetchone()[0]
        inbox_count, organization_count = _count(
            cursor, statements, job.inbox_pk if job.inbox_limit else None, job.organization_pk, now, connection
        )
        for scope, count, limit in (
            (INBOX, inbox_count, job.inbox_limit),
            (ORGANIZATION, organization_count, job.organization_limit),
        ):
            if limit and count > limit:
                cursor.execute(statements.delete_hold, [hold_id])
                return LimitReached(scope, limit, seconds_until_room(scope, job, now))
    return Held(hold_id)


def release(hold_ids: tuple[int, ...]) -> None:
    if hold_ids:
        connection = connections[RecipientHold.objects.db]
        table = connection.ops.quote_name(RecipientHold._meta.db_table)
        with connection.cursor() as cursor:
            cursor.execute(f"DELETE FROM {table} WHERE id IN ({', '.join(['%s'] * len(hold_ids))})", list(hold_ids))


def delete_expired_holds(now: datetime) -> int:
    """Holds past their lifetime (left by a process that died with them; they no
    longer count): for ``pruneattempts``."""
    deleted, _ = RecipientHold.objects.filter(expires_at__lte=now).delete()
    return deleted


def counted(
    inbox_pk: int, organization_pk: int, now: datetime, inbox: bool = True, organization: bool = True
) -> tuple[int, int]:
    """What counts toward the inbox's and its organization's limits now (0 for
    one not asked), in one statement: the one ``take_hold`` runs."""
    connection = connections[RecipientHold.objects.db]
    with connection.cursor() as cursor:
        inbox_count, organization_count = _count(
            cursor, _statements(connection.vendor), inbox_pk if inbox else None, organization_pk, now, connection
        )
    return inbox_count, organization_count if organization else 0


def _count(
    cursor: Any, statements: _Statements, inbox_pk: int | None, organization_pk: int, now: datetime, connection: Any
) -> tuple[int, int]:
    adapt = connection.ops.adapt_datetimefield_value
    since, moment = adapt(minute_of(now - WINDOW)), adapt(now)
    inbox_owner = -1 if inbox_pk is None else inbox_pk  # -1: no such row, nothing counted
    cursor.execute(
        statements.count,
        [INBOX, inbox_owner, since, inbox_owner, moment, ORGANIZATION, organization_pk, since, organization_pk, moment],
    )
    inbox_sent, inbox_held, organization_sent, organization_held = cursor.fetchone()
    return int(inbox_sent) + int(inbox_held), int(organization_sent) + int(organization_held)


@dataclass(frozen=True)
class _Statements:
    lock: str  # "" where the transaction itself is the lock (SQLite)
    insert_hold: str
    count: str
    delete_hold: str


@functools.cache
def _statements(vendor: str) -> _Statements:
    """The statements of a hold, from the models' tables (so they cannot drift from them)."""
    quote = connections[RecipientHold.objects.db].ops.quote_name
    hold, tally_table = quote(RecipientHold._meta.db_table), quote(SendingTally._meta.db_table)
    lock = ""
    if vendor == "postgresql":
        organization, inbox = quote(Organization._meta.db_table), quote(Inbox._meta.db_table)
        lock = (
            f"SELECT (SELECT 1 FROM {organization} WHERE id = %s FOR NO KEY UPDATE), "
            f"(SELECT 1 FROM {inbox} WHERE id = %s FOR NO KEY UPDATE)"
        )
    sent = (
        f"(SELECT COALESCE(SUM(recipients), 0) FROM {tally_table} WHERE scope = %s AND owner_id = %s AND minute >= %s)"
    )
    return _Statements(
        lock=lock,
        insert_hold=(
            f"INSERT INTO {hold} (inbox_id, organization_id, session_id, created_at, expires_at) "
            "VALUES (%s, %s, %s, %s, %s) RETURNING id"
        ),
        count=(
            f"SELECT {sent}, (SELECT COUNT(*) FROM {hold} WHERE inbox_id = %s AND expires_at > %s), "
            f"{sent}, (SELECT COUNT(*) FROM {hold} WHERE organization_id = %s AND expires_at > %s)"
        ),
        delete_hold=f"DELETE FROM {hold} WHERE id = %s",
    )


def tally(sent: list[tuple[int, int, int]], now: datetime) -> None:
    """Add ``sent`` ((inbox, organization, recipients) per message) to this
    minute's tallies: one statement for the batch, raising each row (inbox or
    organization) that is there (inside the committer's transaction). Every
    batch with a message runs it, limits or none: its Python cost counted per
    batch (docs/performance.md), so the statement is written once per size."""
    by_owner: dict[tuple[str, int], int] = {}
    for inbox_pk, organization_pk, recipients in sent:
        for key in ((INBOX, inbox_pk), (ORGANIZATION, organization_pk)):
            by_owner[key] = by_owner.get(key, 0) + recipients
    if not by_owner:
        return
    connection = connections[SendingTally.objects.db]
    minute = connection.ops.adapt_datetimefield_value(minute_of(now))
    params: list[Any] = []
    # Sorted, so that two committers raising the same rows lock them in one order.
    for (scope, owner), count in sorted(by_owner.items()):
        params += (scope, owner, minute, count)
    execute(connection, _tally_statement(connection.vendor, len(by_owner)), params)


@functools.cache
def _tally_statement(vendor: str, rows: int) -> str:
    """One INSERT of ``rows`` tallies, each raised where it exists (the rows'
    keys differ: one statement may not update a row twice)."""
    connection = connections[SendingTally.objects.db]
    table = connection.ops.quote_name(SendingTally._meta.db_table)
    values = ", ".join([f"({', '.join([placeholder(vendor)] * 4)})"] * rows)
    return (
        f"INSERT INTO {table} (scope, owner_id, minute, recipients) VALUES {values} "
        f"ON CONFLICT (scope, owner_id, minute) DO UPDATE SET recipients = {table}.recipients + excluded.recipients"
    )


def seconds_until_room(scope: str, job: HoldJob, now: datetime) -> float:
    """When the oldest thing counted stops counting: its minute's tally turns a
    day old, or its hold expires."""
    owner = job.inbox_pk if scope == INBOX else job.organization_pk
    tallies = SendingTally.objects.filter(scope=scope, owner_id=owner, minute__gte=minute_of(now - WINDOW))
    holds = RecipientHold.objects.filter(expires_at__gt=now)
    holds = holds.filter(inbox_id=owner) if scope == INBOX else holds.filter(organization_id=owner)
    ends = [
        *(minute + WINDOW + MINUTE for minute in tallies.order_by("minute").values_list("minute", flat=True)[:1]),
        *holds.order_by("expires_at").values_list("expires_at", flat=True)[:1],
    ]
    return max(0.0, (min(ends) - now).total_seconds()) if ends else 0.0


def delete_old_tallies(now: datetime) -> int:
    """Tallies no window counts any more: for ``pruneattempts``."""
    deleted, _ = SendingTally.objects.filter(minute__lt=minute_of(now - WINDOW)).delete()
    return deleted


def usage(inbox: Inbox, now: datetime) -> tuple[int, int]:
    """Recipients counted now toward ``inbox``'s limit and its organization's (for the admin)."""
    return counted(inbox.pk, inbox.organization_id, now)
