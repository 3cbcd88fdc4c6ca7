"""Keeping the AuthAttempt records the database cannot take yet.

An attempt that cannot be written (database down or locked) is not dropped: it is
logged at ERROR as one JSON line and kept in memory, then written, with its
original time, by the next batch (the server nudges one every few seconds). The
memory is bounded by ``SMTP_AUTH_BACKLOG_MAX`` records; past that the oldest kept record is dropped and said so at ERROR, so the
log line is then the only copy.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import asdict

from django.conf import settings

from smtpgateway.models import AuthAttempt
from smtpgateway.storage.jobs import AttemptRecord

log = logging.getLogger(__name__)


class AttemptRecorder:
    """Holds the records the database could not take (bounded), until a batch
    writes them (see ``smtpgateway.storage.commits``)."""

    def __init__(self, max_kept: int) -> None:
        self._kept: deque[AttemptRecord] = deque()
        self._max_kept = max_kept
        self._lock = threading.Lock()
        self.dropped = 0  # ever, for the metrics (agentmail_smtp_auth_records_dropped_total)

    def __len__(self) -> int:
        return len(self._kept)

    def keep(self, record: AttemptRecord) -> None:
        """Hold a record that could not be written; log it so it is never silent."""
        log.error("AuthAttempt not written, kept for retry: %s", record.to_log_line(), extra=record.log_fields())
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
            self.dropped += 1
            log.error(
                "AuthAttempt backlog full (%d); dropped from memory: %s",
                self._max_kept,
                dropped.to_log_line(),
                extra=dropped.log_fields(),
            )


recorder = AttemptRecorder(max_kept=getattr(settings, "SMTP_AUTH_BACKLOG_MAX", 10_000))


def attempt_row(record: AttemptRecord) -> AuthAttempt:
    """The record as an (unsaved) AuthAttempt."""
    return AuthAttempt(**asdict(record))
