"""The queue in the database: claiming due recipients under a lease, recording
what their deliveries came to, and the operator's actions (retry now, cancel,
flush). The only ORM code of delivery; the worker's threads call it.

Several workers (processes, hosts) share one database. A claim takes due
recipients whose lease is free or has run out and leases them to one worker:
on PostgreSQL with ``SELECT ... FOR UPDATE SKIP LOCKED`` (claims never wait on
each other), on SQLite with one ``UPDATE`` (SQLite runs one writer at a time,
so the statement is the atomic step). A worker renews its leases while it holds
them; one killed outright leaves its recipients to the others once the lease
runs out. So a recipient is never delivered twice while the workers are
healthy; a worker that dies between the upstream's ``250`` and recording it
leaves that recipient to be delivered again (at-least-once).
"""

from __future__ import annotations

import logging
import secrets
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import connection, transaction
from django.db.models import Count, F, Min, Q
from django.utils import timezone

from delivery.dsn import Failure, build_dsn, status_code
from delivery.models import DeliveryAttempt, DkimKey, Recipient
from delivery.relay import MessageResult
from delivery.retry import RetryPolicy
from delivery.signing import SigningKey
from delivery.states import FAILED, PENDING, RecipientStatus, message_status
from inboxes.models import Message

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClaimedMessage:
    """A message and its recipients leased to this worker."""

    queue_id: str
    sender: str
    accepted_at: datetime
    inbox_id: int
    from_domain: str
    recipients: dict[str, int]  # address -> Recipient id
    content: bytes


@dataclass(frozen=True)
class Delivered:
    """What became of a claimed message: the relay's result, and how it was signed."""

    message: ClaimedMessage
    result: MessageResult
    dkim: str


def new_owner() -> str:
    """A worker's lease name: unique per process run."""
    return f"w-{secrets.token_hex(8)}"


def _due(now: datetime) -> Q:
    return Q(status__in=PENDING, next_attempt_at__lte=now) & (Q(lease_until__isnull=True) | Q(lease_until__lt=now))


def claim(owner: str, limit: int, lease: float) -> list[ClaimedMessage]:
    """Lease up to ``limit`` due recipients to ``owner``, oldest due first, and
    return them grouped by message (with the message's content)."""
    now = timezone.now()
    until = now + timedelta(seconds=lease)
    with transaction.atomic():
        due = Recipient.objects.filter(_due(now)).order_by("next_attempt_at").values("id")[:limit]
        if connection.vendor == "postgresql":
            ids = list(
                Recipient.objects.filter(_due(now))
                .order_by("next_attempt_at")
                .select_for_update(skip_locked=True)
                .values_list("id", flat=True)[:limit]
            )
            taken = Recipient.objects.filter(id__in=ids).update(lease_owner=owner, lease_until=until)
        else:
            taken = Recipient.objects.filter(id__in=due).update(lease_owner=owner, lease_until=until)
    if not taken:
        return []
    rows = list(
        Recipient.objects.filter(lease_owner=owner, lease_until=until, status__in=PENDING).values_list(
            "id", "address", "message__queue_id"
        )
    )
    by_message: dict[str, dict[str, int]] = defaultdict(dict)
    for recipient_id, address, queue_id in rows:
        by_message[queue_id][address] = recipient_id
    messages = Message.objects.filter(queue_id__in=by_message).values_list(
        "queue_id", "envelope_from", "created_at", "inbox_id", "inbox__email", "raw"
    )
    claimed = []
    for queue_id, sender, created_at, inbox_id, inbox_email, raw in messages:
        # A bounce comes from MAILER-DAEMON at our host name; mail from an inbox
        # has that inbox's From (the gateway checks it at DATA).
        domain = "" if not sender else inbox_email.rpartition("@")[2].lower()
        claimed.append(ClaimedMessage(queue_id, sender, created_at, inbox_id, domain, by_message[queue_id], bytes(raw)))
    return claimed


def renew(owner: str, lease: float) -> None:
    """Extend the leases ``owner`` holds: it is alive and still working on them."""
    Recipient.objects.filter(lease_owner=owner, status__in=PENDING).update(
        lease_until=timezone.now() + timedelta(seconds=lease)
    )


def release(owner: str, recipient_ids: list[int]) -> None:
    """Give back leases not worked on (a stopping worker's), due at once for others."""
    Recipient.objects.filter(lease_owner=owner, id__in=recipient_ids).update(lease_owner="", lease_until=None)


def record(deliveries: list[Delivered], policy: RetryPolicy, hostname: str) -> None:
    """Write what the deliveries came to, in one transaction: an attempt per
    recipient, each recipient's new state, a DSN for the failures, and each
    message's status."""
    now = timezone.now()
    attempts: list[DeliveryAttempt] = []
    updates: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    dsns: list[tuple[ClaimedMessage, list[Failure]]] = []
    with transaction.atomic():
        for delivered in deliveries:
            message, result = delivered.message, delivered.result
            started = datetime.fromtimestamp(result.started, tz=timezone.get_current_timezone())
            failures = []
            for outcome in result.recipients:
                recipient_id = message.recipients.get(outcome.address)
                if recipient_id is None:
                    continue
                status = outcome.status
                expired = status is RecipientStatus.DEFERRED and policy.expired(message.accepted_at, now)
                if expired:
                    status = RecipientStatus.EXPIRED
                attempts.append(
                    DeliveryAttempt(
                        recipient_id=recipient_id,
                        started_at=started,
                        duration_ms=int(result.duration * 1000),
                        result=status,
                        code=outcome.code,
                        enhanced_code=outcome.enhanced_code,
                        reply=outcome.reply,
                        upstream=result.upstream[:255],
                        tls_version=result.tls_version,
                        tls_cipher=result.tls_cipher,
                        dkim=delivered.dkim[:255],
                    )
                )
                updates[(status, outcome.code, outcome.enhanced_code, outcome.reply)].append(recipient_id)
                if status in (RecipientStatus.BOUNCED, RecipientStatus.EXPIRED) and message.sender:
                    failures.append(
                        Failure(
                            outcome.address,
                            expired,
                            status_code(outcome.enhanced_code, outcome.code, expired),
                            outcome.reply,
                            result.upstream if not result.upstream.startswith("file") else "",
                            started,
                        )
                    )
            if failures:
                dsns.append((message, failures))
        DeliveryAttempt.objects.bulk_create(attempts)
        for (status, code, enhanced, reply), ids in updates.items():
            _apply(status, code, enhanced, reply, ids, now, policy)
        for message, failures in dsns:
            _queue_dsn(message, failures, hostname)
        refresh_statuses([delivered.message.queue_id for delivered in deliveries])


def _apply(
    status: str, code: int | None, enhanced: str, reply: str, ids: list[int], now: datetime, policy: RetryPolicy
) -> None:
    common: dict[str, Any] = {
        "status": status,
        "attempts": F("attempts") + 1,
        "last_code": code,
        "last_enhanced_code": enhanced,
        "last_reply": reply,
        "lease_owner": "",
        "lease_until": None,
    }
    if status != RecipientStatus.DEFERRED:
        Recipient.objects.filter(id__in=ids).update(**common, finished_at=now)
        return
    # The wait depends on how often each was tried: one statement per count.
    by_attempts: dict[int, list[int]] = defaultdict(list)
    for recipient_id, attempts in Recipient.objects.filter(id__in=ids).values_list("id", "attempts"):
        by_attempts[attempts + 1].append(recipient_id)
    for attempts, same in by_attempts.items():
        Recipient.objects.filter(id__in=same).update(**common, next_attempt_at=now + policy.backoff(attempts))


def _queue_dsn(message: ClaimedMessage, failures: list[Failure], hostname: str) -> None:
    from smtpgateway.storage.messages import new_queue_id

    queue_id = new_queue_id()
    content = build_dsn(
        original=message.content,
        queue_id=message.queue_id,
        sender=message.sender,
        arrival=message.accepted_at,
        failures=failures,
        hostname=hostname,
    )
    Message.objects.create(
        queue_id=queue_id,
        inbox_id=message.inbox_id,
        envelope_from="",
        envelope_to=[message.sender],
        size=len(content),
        subject="Undelivered Mail Returned to Sender",
        raw=content,
    )
    Recipient.objects.create(message_id=queue_id, address=message.sender, next_attempt_at=timezone.now())
    log.info(
        "Bounce %s queued for %s: %d recipient(s) of %s failed",
        queue_id,
        message.sender,
        len(failures),
        message.queue_id,
        extra={"queue_id": queue_id},
    )


def refresh_statuses(queue_ids: list[str]) -> None:
    """Set each message's status from its recipients'."""
    statuses: dict[str, list[str]] = defaultdict(list)
    attempted: set[str] = set()
    for queue_id, status, attempts in Recipient.objects.filter(message_id__in=queue_ids).values_list(
        "message__queue_id", "status", "attempts"
    ):
        statuses[queue_id].append(status)
        if attempts:
            attempted.add(queue_id)
    by_status: dict[str, list[str]] = defaultdict(list)
    for queue_id, listed in statuses.items():
        by_status[message_status(listed, queue_id in attempted)].append(queue_id)
    for status, ids in by_status.items():
        Message.objects.filter(queue_id__in=ids).exclude(status=status).update(status=status)


def queue_depth() -> tuple[dict[str, int], datetime | None]:
    """The recipients still to deliver, by state (all workers'), and when the
    oldest deferred one's message was accepted (None: none deferred). Both read
    through the pending recipients' partial index, not the delivered history."""
    rows = Recipient.objects.filter(status__in=PENDING).values("status").annotate(recipients=Count("id")).order_by()
    counts = {row["status"]: row["recipients"] for row in rows}
    # status__in=PENDING as well: SQLite uses a partial index only for a query
    # that states its condition.
    deferred = Recipient.objects.filter(status__in=PENDING, status=RecipientStatus.DEFERRED)
    oldest: datetime | None = deferred.aggregate(accepted=Min("message__created_at"))["accepted"]
    return counts, oldest


def signing_keys() -> dict[str, list[SigningKey]]:
    """The active DKIM keys by domain."""
    keys: dict[str, list[SigningKey]] = defaultdict(list)
    for domain, selector, algorithm, private in (
        DkimKey.objects.filter(active=True)
        .values_list("domain", "selector", "algorithm", "private_key")
        .order_by("domain", "algorithm", "selector")
    ):
        keys[domain.lower()].append(SigningKey(domain.lower(), selector, algorithm, private.encode("ascii")))
    return dict(keys)


# --- operators -------------------------------------------------------------------
def flush() -> int:
    """Make every deferred recipient due now (``postqueue -f``)."""
    return Recipient.objects.filter(status=RecipientStatus.DEFERRED).update(next_attempt_at=timezone.now())


def retry_now(recipient_ids: list[int]) -> int:
    return Recipient.objects.filter(id__in=recipient_ids, status__in=PENDING).update(next_attempt_at=timezone.now())


def cancel(recipient_ids: list[int]) -> int:
    """Stop delivering these (those not delivered or failed already); no DSN."""
    now = timezone.now()
    ids = list(Recipient.objects.filter(id__in=recipient_ids, status__in=PENDING).values_list("id", flat=True))
    with transaction.atomic():
        Recipient.objects.filter(id__in=ids).update(
            status=RecipientStatus.CANCELLED, finished_at=now, lease_owner="", lease_until=None
        )
        refresh_statuses(
            list(Recipient.objects.filter(id__in=ids).values_list("message__queue_id", flat=True).distinct())
        )
    return len(ids)


__all__ = ["FAILED", "ClaimedMessage", "Delivered", "claim", "record", "release", "renew"]
