"""Daily recipient limits, counted in the database so that they hold across
processes and hosts exactly.

What counts toward an inbox's (or its organization's) limit is every recipient
of its messages accepted in the last 24 hours (their ``Recipient`` rows; bounces,
sent with a null sender, do not count) and every recipient a RCPT has accepted
for a message not committed yet (a ``RecipientHold``). A RCPT takes a hold in a
transaction that on PostgreSQL first locks the organization's and the inbox's
rows (on SQLite, every write transaction begins IMMEDIATE, holding the
database's one write lock: ``agentmail_site/settings.py``): so two gateways
holding for one inbox take turns, and each counts the other's hold. The hold is counted together with the committed recipients in one
statement, one snapshot, so a message committing meanwhile (its holds deleted,
its Recipient rows written, in one transaction) is counted once either way.

A hold lives for ``HOLD_LIFETIME`` at most: a process that dies with one leaves
it counted that long, no longer.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.db.models import Func, IntegerField, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce

from delivery.models import Recipient
from inboxes.models import Inbox, Message, Organization, RecipientHold
from smtpgateway.storage.jobs import Held, HoldJob, LimitReached

WINDOW = timedelta(hours=24)
HOLD_LIFETIME = timedelta(minutes=30)


def take_hold(job: HoldJob, now: datetime) -> Held | LimitReached:
    """Hold room for one recipient, or say which limit it would pass (inside the
    caller's transaction)."""
    # Locks in one order (organization, then inbox), so holds never deadlock;
    # NO KEY UPDATE does not wait for the key-share locks of Message inserts.
    Organization.objects.select_for_update(no_key=True).filter(pk=job.organization_pk).values_list("pk").first()
    Inbox.objects.select_for_update(no_key=True).filter(pk=job.inbox_pk).values_list("pk").first()
    hold = RecipientHold.objects.create(
        inbox_id=job.inbox_pk,
        organization_id=job.organization_pk,
        session_id=job.session_id,
        created_at=now,
        expires_at=now + HOLD_LIFETIME,
    )
    inbox_count, organization_count = counted(
        job.inbox_pk, job.organization_pk, now, inbox=job.inbox_limit > 0, organization=job.organization_limit > 0
    )
    for scope, count, limit in (
        ("inbox", inbox_count, job.inbox_limit),
        ("organization", organization_count, job.organization_limit),
    ):
        if limit and count > limit:
            hold.delete()
            return LimitReached(scope, limit, seconds_until_room(scope, job, now))
    return Held(hold.pk)


def release(hold_ids: tuple[int, ...]) -> None:
    if hold_ids:
        RecipientHold.objects.filter(pk__in=hold_ids).delete()


def delete_expired_holds(now: datetime) -> int:
    """Holds past their lifetime (left by a process that died with them; they no
    longer count): for ``pruneattempts``."""
    deleted, _ = RecipientHold.objects.filter(expires_at__lte=now).delete()
    return deleted


def counted(
    inbox_pk: int, organization_pk: int, now: datetime, inbox: bool = True, organization: bool = True
) -> tuple[int, int]:
    """What counts toward the inbox's and its organization's limits now (0 for
    one not asked), in one statement."""
    since = now - WINDOW
    sent = Recipient.objects.filter(message__created_at__gt=since).exclude(message__envelope_from="")
    held = RecipientHold.objects.filter(expires_at__gt=now)
    zero = Value(0, output_field=IntegerField())
    expressions: dict[str, Any] = {
        "inbox_sent": _count(sent.filter(message__inbox_id=inbox_pk)) if inbox else zero,
        "inbox_held": _count(held.filter(inbox_id=inbox_pk)) if inbox else zero,
        "organization_sent": (
            _count(sent.filter(message__inbox__organization_id=organization_pk)) if organization else zero
        ),
        "organization_held": _count(held.filter(organization_id=organization_pk)) if organization else zero,
    }
    # One row to hang the counts on: the organization's own.
    found = list(Organization.objects.filter(pk=organization_pk).annotate(**expressions).values_list(*expressions))
    if not found:
        return 0, 0
    inbox_sent, inbox_held, organization_sent, organization_held = found[0]
    return inbox_sent + inbox_held, organization_sent + organization_held


def _count(queryset: QuerySet[Any]) -> Coalesce:
    """``(SELECT COUNT(*) ...)`` as an expression (COUNT as a plain function, so
    the ORM adds no GROUP BY)."""
    counting = queryset.order_by().annotate(n=Func(Value(1), function="COUNT")).values("n")
    return Coalesce(Subquery(counting, output_field=IntegerField()), 0)


def seconds_until_room(scope: str, job: HoldJob, now: datetime) -> float:
    """When the oldest thing counted stops counting: its message turns 24 hours
    old, or its hold expires."""
    messages = Message.objects.exclude(envelope_from="").filter(created_at__gt=now - WINDOW)
    holds = RecipientHold.objects.filter(expires_at__gt=now)
    if scope == "inbox":
        messages, holds = messages.filter(inbox_id=job.inbox_pk), holds.filter(inbox_id=job.inbox_pk)
    else:
        messages = messages.filter(inbox__organization_id=job.organization_pk)
        holds = holds.filter(organization_id=job.organization_pk)
    ends = [
        *(created + WINDOW for created in messages.order_by("created_at").values_list("created_at", flat=True)[:1]),
        *holds.order_by("expires_at").values_list("expires_at", flat=True)[:1],
    ]
    return max(0.0, (min(ends) - now).total_seconds()) if ends else 0.0


def usage(inbox: Inbox, now: datetime) -> tuple[int, int]:
    """Recipients counted now toward ``inbox``'s limit and its organization's (for the admin)."""
    return counted(inbox.pk, inbox.organization_id, now)
