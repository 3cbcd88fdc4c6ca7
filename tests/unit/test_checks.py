"""The AUTH checker's two promises, against the real database and a real gateway:
a revoked key or disabled inbox is refused within SMTP_AUTH_CACHE_SECONDS, and
the rate limit counts failures not yet committed exactly once."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from smtpgateway.auth.checker import Checker, FactsCache, PendingFailures
from smtpgateway.auth.limits import RateLimit
from smtpgateway.auth.rules import Peer
from smtpgateway.models import AuthAttempt
from smtpgateway.reasons import Reason
from smtpgateway.storage.jobs import AuthJob
from smtpgateway.storage.records import attempt_row
from tests.helpers import UNKNOWN_KEY, VALID_INBOX


def test_cache_bound_cannot_be_raised_past_one_second() -> None:
    with pytest.raises(ValueError, match="SMTP_AUTH_CACHE_SECONDS must be between 0 and 1"):
        FactsCache(1.5)


def test_cache_holds_a_bounded_number_of_entries() -> None:
    cache: FactsCache[str, int] = FactsCache(1.0, max_entries=3)
    for number in range(10):
        cache.store(f"guess{number}", None, fetched_at=100.0)
    assert len(cache) == 3
    assert cache.fresh("guess9", 100.5) == (True, None)
    assert cache.fresh("guess0", 100.5) == (False, None)
    assert cache.fresh("guess9", 101.0) == (False, None)  # read again at the bound


def failed_job(session_id: str) -> AuthJob:
    return AuthJob(
        Peer(session_id, "192.0.2.7", 40000, "192.0.2.7"),
        "PLAIN",
        VALID_INBOX.encode(),
        UNKNOWN_KEY.encode(),
        RateLimit(2, timedelta(minutes=10)),
    )


def test_a_failure_committed_while_still_pending_counts_once(scenarios: None) -> None:
    """The committer writes a row before it forgets it as pending: in between, the
    checker sees it both in the database and in memory, and must count it once."""
    checker = Checker(cache_seconds=0, pending=PendingFailures())
    first = checker.check_batch([failed_job("s1")])
    assert first.outcomes[0].reason is Reason.API_KEY_NOT_FOUND
    assert len(checker.pending) == 1
    AuthAttempt.objects.bulk_create([attempt_row(record) for record in first.records])  # committed, not yet forgotten
    # One counted failure so far (limit 2): the next is still checked...
    assert checker.check_batch([failed_job("s2")]).outcomes[0].reason is Reason.API_KEY_NOT_FOUND
    # ...and now there are two (one committed, one pending): refused.
    assert checker.check_batch([failed_job("s3")]).outcomes[0].reason is Reason.RATE_LIMITED
    assert len(checker.pending) == 2  # RATE_LIMITED is not a counted failure


class CommittedJustBeforeRead(PendingFailures):
    """Pending failures whose committer finishes (writes the rows, then forgets
    them) just before the checker reads what is pending: the race of a real run."""

    def __init__(self) -> None:
        super().__init__()
        self.uncommitted: list[Any] = []

    def identities(self, addresses: Any, since: Any) -> Any:
        if self.uncommitted:
            AuthAttempt.objects.bulk_create([attempt_row(record) for record in self.uncommitted])
            self.forget(self.uncommitted)
            self.uncommitted = []
        return super().identities(addresses, since)


def test_a_failure_committed_during_the_count_is_not_missed(scenarios: None) -> None:
    """Read in the wrong order (database, then pending), this failure would be in
    neither: the database was read before its commit, and memory after it."""
    pending = CommittedJustBeforeRead()
    checker = Checker(cache_seconds=0, pending=pending)
    limit_one = RateLimit(1, timedelta(minutes=10))
    first = checker.check_batch(
        [
            AuthJob(
                Peer("s1", "192.0.2.8", 1, "192.0.2.8"), "PLAIN", VALID_INBOX.encode(), UNKNOWN_KEY.encode(), limit_one
            )
        ]
    )
    pending.uncommitted = list(first.records)
    second = checker.check_batch(
        [
            AuthJob(
                Peer("s2", "192.0.2.8", 2, "192.0.2.8"), "PLAIN", VALID_INBOX.encode(), UNKNOWN_KEY.encode(), limit_one
            )
        ]
    )
    assert second.outcomes[0].reason is Reason.RATE_LIMITED


def test_warming_up_reads_but_neither_caches_nor_records(scenarios: None) -> None:
    """What the checker thread runs at start, before any client: both reads, with
    values that match nothing, so no entry is cached and no attempt recorded."""
    checker = Checker(cache_seconds=1.0, pending=PendingFailures())
    checker.warm_up()
    assert len(checker.keys) == 0 and len(checker.inboxes) == 0
    assert len(checker.pending) == 0
    assert AuthAttempt.objects.count() == 0
