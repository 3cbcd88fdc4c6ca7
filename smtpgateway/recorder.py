"""AuthAttempt records, and keeping the ones the database cannot take yet.

An attempt that cannot be written (database down or locked) is not dropped: it is
logged at ERROR as one JSON line and kept in memory, then written, with its
original time, by the next batch (the server nudges one every few seconds). The
memory is bounded by ``SMTP_AUTH_BACKLOG_MAX`` records (default 10,000, about
5 MB); past that the oldest kept record is dropped and said so at ERROR, so the
log line is then the only copy.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import deque
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from django.conf import settings

from smtpgateway.models import USERNAME_MAX_LENGTH, AuthAttempt
from smtpgateway.reasons import CREDENTIAL_FAILURES, Reason
from smtpgateway.safetext import presented_username, printable_text

if TYPE_CHECKING:
    from smtpgateway.auth import Peer

log = logging.getLogger(__name__)


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


    def to_row(self) -> AuthAttempt:
        return AuthAttempt(**asdict(self))

    def to_log_line(self) -> str:
        fields = asdict(self)
        fields["created_at"] = self.created_at.isoformat()
        return json.dumps(fields, sort_keys=True)


class AttemptRecorder:
    """Holds the records the database could not take (bounded), until a batch
    writes them (see ``smtpgateway.commits``)."""

    def __init__(self, max_kept: int) -> None:
        self._kept: deque[AttemptRecord] = deque()
        self._max_kept = max_kept
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._kept)

    def keep(self, record: AttemptRecord) -> None:
        """Hold a record that could not be written; log it so it is never silent."""
        log.error("AuthAttempt not written, kept for retry: %s", record.to_log_line())
        with self._lock:
            self._kept.append(record)
            self._enforce_bound()

    def drain(self) -> list[AttemptRecord]:
        """Take every kept record, to be written by the caller's transaction."""
        with self._lock:
            records = list(self._kept)
            self._kept.clear()
        return records

    def restore(self, records: list[AttemptRecord]) -> None:
        """Put back records whose transaction failed (oldest first, as they were)."""
        if not records:
            return
        with self._lock:
            self._kept.extendleft(reversed(records))
            self._enforce_bound()

    def _enforce_bound(self) -> None:
        while len(self._kept) > self._max_kept:
            dropped = self._kept.popleft()
            log.error("AuthAttempt backlog full (%d); dropped from memory: %s", self._max_kept, dropped.to_log_line())


recorder = AttemptRecorder(max_kept=getattr(settings, "SMTP_AUTH_BACKLOG_MAX", 10_000))
