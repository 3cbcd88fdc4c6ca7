"""Checking SMTP credentials and recording every attempt.

Two layers:

* :func:`validate` is the rule: the nine checks in their fixed order, as a plain
  function of the presented credentials and what a lookup found. No ORM.
* :func:`authenticate` is the one synchronous unit of work the server runs (in a
  worker thread) per AUTH: look up, validate, record the attempt, touch the key's
  ``last_used_at``; one transaction for the writes.

Whenever both formats are valid, both the key and the inbox are looked up, so an
unknown key, an unknown inbox and a wrong organization cost the same queries and
the reply time does not say which check failed.

The secret never leaves this module's locals: records carry the key's visible
prefix only, and only when the key was well formed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Callable

from django.db import DatabaseError, transaction
from django.utils import timezone

from apikeys import keys
from apikeys.models import ApiKey
from apikeys.scopes import SMTP_SEND
from inboxes.ids import INBOX_ID_PATTERN
from inboxes.models import Inbox
from smtpgateway.models import AuthAttempt
from smtpgateway.reasons import CREDENTIAL_FAILURES, Reason
from smtpgateway.recorder import AttemptRecord, recorder

if TYPE_CHECKING:
    from smtpgateway.limits import RateLimit
    from smtpgateway.tls import TlsInfo

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class KeyFacts:
    """What validation needs to know about a stored key."""

    id: int
    organization_id: int
    revoked: bool
    expires_at: datetime | None
    scopes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class InboxFacts:
    """What validation and the session need to know about an inbox."""

    id: int
    inbox_id: str
    organization_id: int
    status: str
    email: str


@dataclass(frozen=True, slots=True)
class Outcome:
    reason: Reason
    key: KeyFacts | None = None
    inbox: InboxFacts | None = None

    @property
    def success(self) -> bool:
        return self.reason is Reason.OK


# (inbox_id, key digest) -> what exists for each
Lookup = Callable[[str, str], tuple[KeyFacts | None, InboxFacts | None]]


def validate(username: str, password: str, lookup: Lookup, now: datetime) -> Outcome:
    """Apply the checks in order; the first that fails decides the reason."""
    if INBOX_ID_PATTERN.fullmatch(username) is None:
        return Outcome(Reason.INVALID_INBOX_FORMAT)
    if not keys.is_well_formed(password):
        return Outcome(Reason.INVALID_API_KEY_FORMAT)
    key, inbox = lookup(username, keys.digest_key(password))
    if key is None:
        return Outcome(Reason.API_KEY_NOT_FOUND, inbox=inbox)
    if key.revoked:
        return Outcome(Reason.API_KEY_REVOKED, key, inbox)
    if key.expires_at is not None and key.expires_at <= now:
        return Outcome(Reason.API_KEY_EXPIRED, key, inbox)
    if SMTP_SEND not in key.scopes:
        return Outcome(Reason.INSUFFICIENT_PERMISSIONS, key, inbox)
    if inbox is None:
        return Outcome(Reason.INBOX_NOT_FOUND, key)
    if inbox.status == Inbox.Status.DISABLED:
        return Outcome(Reason.INBOX_DISABLED, key, inbox)
    if inbox.status != Inbox.Status.ACTIVE:
        return Outcome(Reason.INBOX_SUSPENDED, key, inbox)
    if inbox.organization_id != key.organization_id:
        return Outcome(Reason.ORGANIZATION_MISMATCH, key, inbox)
    return Outcome(Reason.OK, key, inbox)


def lookup_in_database(inbox_id: str, digest: str) -> tuple[KeyFacts | None, InboxFacts | None]:
    """Both rows, always both queries (see the module docstring on timing)."""
    key_row = (
        ApiKey.objects.filter(digest=digest)
        .values_list("id", "organization_id", "revoked_at", "expires_at", "scopes")
        .first()
    )
    inbox_row = (
        Inbox.objects.filter(inbox_id=inbox_id)
        .values_list("id", "inbox_id", "organization_id", "status", "email")
        .first()
    )
    key = None
    if key_row is not None:
        key_id, org_id, revoked_at, expires_at, scopes = key_row
        key = KeyFacts(key_id, org_id, revoked_at is not None, expires_at, tuple(scopes or ()))
    inbox = InboxFacts(*inbox_row) if inbox_row is not None else None
    return key, inbox


@dataclass(frozen=True, slots=True)
class Peer:
    """Who is asking, as far as the connection tells."""

    session_id: str
    remote_addr: str | None
    remote_port: int | None
    tls: TlsInfo | None = None


def recent_failures(remote_addr: str | None, since: datetime, limit: int) -> int:
    """Failed credential checks from this address since ``since`` (counted up to
    ``limit``). Counted in the database, so every gateway process sharing it sees
    the same number. RATE_LIMITED refusals do not count: lockout ends one window
    after the last real guess."""
    failures = AuthAttempt.objects.filter(
        remote_addr=remote_addr, success=False, created_at__gte=since, reason__in=CREDENTIAL_FAILURES
    )
    return len(failures.values_list("id", flat=True)[:limit])


def authenticate(
    peer: Peer, mechanism: str, username: bytes, password: bytes, rate_limit: RateLimit | None = None
) -> Outcome:
    """Check the rate limit, validate and record one AUTH attempt. Runs in a
    database worker thread. ``rate_limit`` is None for exempt addresses.

    A database error while validating or recording yields TEMPORARY_FAILURE; the
    client gets a 4xx and the record is kept by the recorder until it can be
    written.
    """
    now = timezone.now()
    user_text = username.decode("utf-8", errors="replace")
    secret_text = password.decode("ascii", errors="replace")
    try:
        if rate_limit and recent_failures(peer.remote_addr, now - rate_limit.window, rate_limit.failures) >= rate_limit.failures:
            outcome = Outcome(Reason.RATE_LIMITED)
        else:
            outcome = validate(user_text, secret_text, lookup_in_database, now)
    except DatabaseError:
        log.exception("Database error while validating AUTH (session %s)", peer.session_id)
        outcome = Outcome(Reason.TEMPORARY_FAILURE)
    record = AttemptRecord.build(
        peer=peer,
        when=now,
        mechanism=mechanism,
        username=username,
        key_prefix=keys.visible_prefix(secret_text) if keys.is_well_formed(secret_text) else "",
        reason=outcome.reason,
        api_key_id=outcome.key.id if outcome.key else None,
        inbox_id=outcome.inbox.id if outcome.inbox else None,
        organization_id=_organization_of(outcome),
    )
    try:
        with transaction.atomic():
            recorder.write(record)
            if outcome.success:
                _touch_key(outcome.key.id, now)  # type: ignore[union-attr]
    except DatabaseError:
        log.exception("Database error while recording AUTH (session %s)", peer.session_id)
        recorder.keep(record.as_failure(Reason.TEMPORARY_FAILURE))
        return Outcome(Reason.TEMPORARY_FAILURE, outcome.key, outcome.inbox)
    return outcome


def record_unvalidated(peer: Peer, mechanism: str, username: bytes, reason: Reason) -> None:
    """Record an exchange that never reached validation (MALFORMED, ABORTED, ...)."""
    record = AttemptRecord.build(peer=peer, when=timezone.now(), mechanism=mechanism, username=username, reason=reason)
    try:
        recorder.write(record)
    except DatabaseError:
        log.exception("Database error while recording AUTH (session %s)", peer.session_id)
        recorder.keep(record)


def _organization_of(outcome: Outcome) -> int | None:
    if outcome.key is not None:
        return outcome.key.organization_id
    if outcome.inbox is not None:
        return outcome.inbox.organization_id
    return None


def _touch_key(key_id: int, now: datetime) -> None:
    ApiKey.objects.filter(pk=key_id).update(last_used_at=now)
