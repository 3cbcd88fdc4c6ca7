"""The nine checks as a rule: :func:`validate` applies them in their fixed
order to the presented credentials and what a lookup found. No ORM, no I/O.

Whenever both formats are valid, both the key and the inbox are looked up
(``smtpgateway.auth.reads``, for a whole batch: ``smtpgateway.auth.checker``),
so an unknown key, an unknown inbox and a wrong organization cost the same work;
and a failure is answered at a fixed delay after the AUTH began
(``smtpgateway.session.auth_exchange``), so the reply time does not say which
check failed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from apikeys import keys
from apikeys.scopes import SMTP_SEND
from inboxes.ids import inbox_lookup_name
from inboxes.status import InboxStatus
from smtpgateway.reasons import Reason

if TYPE_CHECKING:
    from smtpgateway.tls import TlsInfo


@dataclass(frozen=True, slots=True)
class KeyFacts:
    """What validation needs to know about a stored key."""

    id: int
    organization_id: int
    revoked: bool
    expires_at: datetime | None
    scopes: tuple[str, ...]
    # The inboxes (primary keys) it is limited to; empty: every inbox of its organization.
    inboxes: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class InboxFacts:
    """What validation and the session need to know about an inbox."""

    id: int
    inbox_id: str
    organization_id: int
    status: str
    email: str
    # Recipients per 24 hours (None: the setting's default; 0: none).
    daily_recipient_limit: int | None = None
    organization_daily_recipient_limit: int | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    reason: Reason
    key: KeyFacts | None = None
    inbox: InboxFacts | None = None

    @property
    def success(self) -> bool:
        return self.reason is Reason.OK


# (inbox lookup name: ``inboxes.ids.inbox_lookup_name``, key digest) -> what exists for each
Lookup = Callable[[str, str], tuple[KeyFacts | None, InboxFacts | None]]


def validate(username: str, password: str, lookup: Lookup, now: datetime) -> Outcome:
    """Apply the checks in order; the first that fails decides the reason. The
    username is an inbox's id or its email address."""
    lookup_name = inbox_lookup_name(username)
    if lookup_name is None:
        return Outcome(Reason.INVALID_INBOX_FORMAT)
    if not keys.is_well_formed(password):
        return Outcome(Reason.MALFORMED_KEY if keys.has_bad_checksum(password) else Reason.INVALID_API_KEY_FORMAT)
    key, inbox = lookup(lookup_name, keys.digest_key(password))
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
    if inbox.status == InboxStatus.DISABLED:
        return Outcome(Reason.INBOX_DISABLED, key, inbox)
    if inbox.status != InboxStatus.ACTIVE:
        return Outcome(Reason.INBOX_SUSPENDED, key, inbox)
    if inbox.organization_id != key.organization_id:
        return Outcome(Reason.ORGANIZATION_MISMATCH, key, inbox)
    if key.inboxes and inbox.id not in key.inboxes:
        return Outcome(Reason.INBOX_NOT_ALLOWED, key, inbox)
    return Outcome(Reason.OK, key, inbox)


def lookup_name_if_well_formed(username: str, password: str) -> str | None:
    """The inbox lookup name when both formats are valid (then both are looked up), else None."""
    return inbox_lookup_name(username) if keys.is_well_formed(password) else None


@dataclass(frozen=True, slots=True)
class Peer:
    """Who is asking, as far as the connection tells."""

    session_id: str
    remote_addr: str | None
    remote_port: int | None
    # What the rate limit counts by (smtpgateway.auth.limits.Client.network).
    client_network: str | None
    tls: TlsInfo | None = None
