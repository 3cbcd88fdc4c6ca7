"""What the event loop hands to the database threads: the job types, and the
values they carry (an AUTH attempt's record, a message's submission).

Plain values, no ORM: the session layer builds them (``smtpgateway.session``),
the database threads run them (``smtpgateway.storage.threads``), and a record
or a submission holds everything its write needs, gathered on the loop.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime

from smtpgateway.auth.limits import RateLimit
from smtpgateway.auth.rules import Peer
from smtpgateway.reasons import CREDENTIAL_FAILURES, Reason
from smtpgateway.safetext import presented_username, printable_text

# AuthAttempt.username's length (the model takes it from here).
USERNAME_MAX_LENGTH = 128


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One AuthAttempt row, before it is written. Holds no secret."""

    created_at: datetime
    session_id: str
    remote_addr: str | None
    remote_port: int | None
    client_network: str | None
    encrypted: bool
    tls_version: str
    tls_cipher: str
    mechanism: str
    username: str
    key_prefix: str
    success: bool
    credential_failure: bool
    reason: str
    api_key_id: int | None = None
    inbox_id: int | None = None
    organization_id: int | None = None

    @classmethod
    def build(
        cls,
        *,
        peer: Peer,
        when: datetime,
        mechanism: str,
        username: bytes,
        reason: Reason,
        key_prefix: str = "",
        api_key_id: int | None = None,
        inbox_id: int | None = None,
        organization_id: int | None = None,
    ) -> AttemptRecord:
        return cls(
            created_at=when,
            session_id=peer.session_id,
            remote_addr=peer.remote_addr,
            remote_port=peer.remote_port,
            client_network=peer.client_network,
            encrypted=peer.tls is not None,
            tls_version=peer.tls.version if peer.tls else "",
            tls_cipher=peer.tls.cipher[:64] if peer.tls else "",
            mechanism=printable_text(mechanism, 32),  # as sent, when unsupported
            username=presented_username(username, USERNAME_MAX_LENGTH),
            key_prefix=key_prefix,
            success=reason is Reason.OK,
            credential_failure=reason.value in CREDENTIAL_FAILURES,
            reason=reason.value,
            api_key_id=api_key_id,
            inbox_id=inbox_id,
            organization_id=organization_id,
        )

    def to_log_line(self) -> str:
        fields = asdict(self)
        fields["created_at"] = self.created_at.isoformat()
        return json.dumps(fields, sort_keys=True)

    def log_fields(self) -> dict[str, str]:
        """The fields ``LOG_FORMAT=json`` writes of their own for a log record about this attempt."""
        fields = {"session_id": self.session_id, "reason": self.reason}
        return fields | ({"client_address": self.remote_addr} if self.remote_addr else {})


@dataclass(frozen=True, slots=True)
class Submission:
    """Everything the store step needs, gathered on the event loop."""

    inbox_pk: int
    helo_name: str
    remote_addr: str | None
    hostname: str
    protocol: str  # "ESMTPA" or "ESMTPSA" (RFC 3848)
    tls_note: str  # e.g. "(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384)", or ""
    mail_from: str
    rcpt_tos: tuple[str, ...]
    content: bytes | bytearray  # the DATA buffer itself (smtpgateway.session.body), not a copy
    author: str = ""  # the inbox's address: the only one From: and Sender: may name
    session_id: str = ""  # the SMTP session, linking the message to its AuthAttempt
    # The RecipientHold rows its recipients took (daily limits): deleted as the
    # message's Recipient rows are written, in the same transaction.
    hold_ids: tuple[int, ...] = ()
    organization_pk: int = 0  # the inbox's, for its organization's daily tally


@dataclass(frozen=True, slots=True)
class AuthJob:
    """Check one AUTH. ``rate_limit`` is None for exempt addresses.
    ``reply_due``: the ``time.monotonic()`` before which a failure is not
    answered anyway (the failure delay), so its record's commit may wait until
    then to share a transaction with others; 0: answer as soon as committed."""

    peer: Peer
    mechanism: str
    username: bytes
    password: bytes
    rate_limit: RateLimit | None
    reply_due: float = 0.0

    def __repr__(self) -> str:  # never show the secret
        return f"AuthJob({self.peer.session_id}, {self.mechanism})"


@dataclass(frozen=True, slots=True)
class RecordsJob:
    """Write AuthAttempt records, and set ``last_used_at`` of the keys that
    successful ones used (to the second: :class:`LastUsedWrites`)."""

    records: tuple[AttemptRecord, ...]


@dataclass(frozen=True, slots=True)
class StoreJob:
    """Store one message. Result: its queue id, or :data:`NOT_STORED`."""

    submission: Submission


@dataclass(frozen=True, slots=True)
class FlushJob:
    """Write the records the recorder kept while the database was away."""


@dataclass(frozen=True, slots=True)
class HoldJob:
    """Hold room for one recipient under the daily limits (a RCPT). Limits are
    recipients per 24 hours, 0 for none. Result: :class:`Held`,
    :class:`LimitReached`, or None (the database could not be reached)."""

    inbox_pk: int
    organization_pk: int
    inbox_limit: int
    organization_limit: int
    session_id: str
    # Holds this session gave back (ReleaseJob) since its last HoldJob, deleted
    # first, in the same transaction: a RCPT right after RSET must find its room
    # back even if the ReleaseJob went to another committer.
    released: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Held:
    hold_id: int


@dataclass(frozen=True, slots=True)
class LimitReached:
    """``scope``: "inbox" or "organization"; ``retry_after``: seconds until room."""

    scope: str
    limit: int
    retry_after: float


@dataclass(frozen=True, slots=True)
class ReleaseJob:
    """Give back holds whose mail transaction ended without a stored message."""

    hold_ids: tuple[int, ...]


Job = RecordsJob | StoreJob | FlushJob | HoldJob | ReleaseJob

# A StoreJob's result when the message was not stored (the database refused it
# or was unavailable; the storage layer has logged why): the client gets a 451.
NOT_STORED = None


@dataclass(frozen=True, slots=True)
class AuthorRefused:
    """A StoreJob's result when the message names an author other than its inbox
    (``header``: "From" or "Sender"): nothing stored, the client gets a 550."""

    header: str
