"""Deciding AUTH attempts in batches, with reads only.

The checker thread (``smtpgateway.storage.threads``) takes every :class:`AuthJob` waiting
and runs :func:`check_batch`: one grouped query for the rate-limit counts, one
for the keys and one for the inboxes that the cache does not hold fresh, then
:func:`smtpgateway.auth.rules.validate` for each. The sessions are answered right
away, but for counted failures, which are answered once their rows have
committed (``smtpgateway.storage.threads``), so that every gateway on the database counts
them before the client can try again. The other rows are committed within about
20 ms (``smtpgateway.storage.threads.RECORDS_LINGER``), so a slow commit, an fsync or a
WAL checkpoint never holds up a successful AUTH. SIGTERM waits for them; only a
process killed outright in those milliseconds loses them, as it would lose the
attempts still being checked.

Two things keep the answers as strict as if every row were already committed:

* :class:`PendingFailures` holds the counted failures decided but not yet
  committed, so the rate limit counts them: exactly, without double counting a
  row that commits while the count is read (rows are matched by identity).
* :class:`FactsCache` serves key and inbox state for at most
  ``SMTP_AUTH_CACHE_SECONDS`` (one second at most) after the read that fetched
  it began; a key revoked or an inbox disabled is refused within that bound.
  Expiry is compared with the clock on every attempt, not cached.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

from django.db import DatabaseError, InterfaceError, OperationalError, connection
from django.utils import timezone

from apikeys import keys
from smtpgateway.auth.reads import fetch_facts, recent_failures
from smtpgateway.auth.rules import InboxFacts, KeyFacts, Lookup, Outcome, lookup_name_if_well_formed, validate
from smtpgateway.reasons import CREDENTIAL_FAILURES, Reason
from smtpgateway.storage.jobs import AttemptRecord, AuthJob

log = logging.getLogger(__name__)

MAX_CACHE_SECONDS = 1.0
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class CheckedBatch:
    outcomes: list[Outcome]
    records: list[AttemptRecord]


class FactsCache(Generic[K, V]):
    """What a read found (None included: "no such key"), served for ``ttl``
    seconds after that read began, then read again. Oldest entries go first; at
    most ``max_entries`` are held, so guessing random keys cannot grow it."""

    def __init__(self, ttl: float, max_entries: int = 50_000) -> None:
        if not 0 <= ttl <= MAX_CACHE_SECONDS:
            raise ValueError(f"SMTP_AUTH_CACHE_SECONDS must be between 0 and {MAX_CACHE_SECONDS:g}, not {ttl!r}")
        self.ttl = ttl
        self._max_entries = max_entries
        self._entries: OrderedDict[K, tuple[float, V | None]] = OrderedDict()

    def fresh(self, key: K, now: float) -> tuple[bool, V | None]:
        entry = self._entries.get(key)
        if entry is None or now - entry[0] >= self.ttl:
            return False, None
        return True, entry[1]

    def store(self, key: K, value: V | None, fetched_at: float) -> None:
        if self.ttl <= 0:
            return
        self._entries.pop(key, None)
        self._entries[key] = (fetched_at, value)
        while self._entries:
            oldest_key, (oldest_time, _) = next(iter(self._entries.items()))
            if fetched_at - oldest_time < self.ttl and len(self._entries) <= self._max_entries:
                break
            del self._entries[oldest_key]

    def __len__(self) -> int:
        return len(self._entries)


# A counted failure's identity: no session makes two attempts at one instant.
FailureId = tuple[str, datetime]


class PendingFailures:
    """Counted failures (``credential_failure``) decided by this process but not
    yet known to be committed. Shared by the checker (adds, counts) and the
    committers (forget once committed)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_client: dict[str, dict[FailureId, None]] = {}

    def add(self, record: AttemptRecord) -> None:
        if record.credential_failure and record.client_network:
            with self._lock:
                self._by_client.setdefault(record.client_network, {})[(record.session_id, record.created_at)] = None

    def forget(self, records: list[AttemptRecord]) -> None:
        with self._lock:
            for record in records:
                if record.credential_failure and record.client_network:
                    pending = self._by_client.get(record.client_network)
                    if pending is not None:
                        pending.pop((record.session_id, record.created_at), None)
                        if not pending:
                            del self._by_client[record.client_network]

    def identities(self, clients: set[str], since: datetime) -> dict[str, set[FailureId]]:
        """These clients' pending failures since ``since`` (one lock for the
        batch); older ones are dropped (they no longer count, and a record the
        database never took must not stay here for good)."""
        found: dict[str, set[FailureId]] = {}
        with self._lock:
            for client in clients:
                pending = self._by_client.get(client)
                if not pending:
                    continue
                for stale in [identity for identity in pending if identity[1] < since]:
                    del pending[stale]
                found[client] = set(pending)
        return found

    def __len__(self) -> int:
        with self._lock:
            return sum(len(pending) for pending in self._by_client.values())


class Checker:
    """The checker thread's state: its caches (used by that one thread only) and
    the pending failures it shares with the committers."""

    def __init__(self, cache_seconds: float, pending: PendingFailures) -> None:
        self.keys: FactsCache[str, KeyFacts] = FactsCache(cache_seconds)
        self.inboxes: FactsCache[str, InboxFacts] = FactsCache(cache_seconds)
        self.pending = pending

    def warm_up(self) -> None:
        """Connect and run each read once, with values that match nothing (so
        nothing is cached and nothing recorded)."""
        recent_failures({"0.0.0.0"}, timezone.now(), 1)
        fetch_facts({keys.digest_key("")}, {""})

    def check_batch(self, jobs: list[AuthJob]) -> CheckedBatch:
        """Decide every job; never raises for the database: if it cannot be read,
        every attempt is a TEMPORARY_FAILURE (and still recorded). So is every
        attempt of a batch whose check failed on a bug: answered 454 and
        recorded, not answered 451 and lost."""
        now = timezone.now()
        texts = [
            (job.username.decode("utf-8", errors="replace"), job.password.decode("ascii", errors="replace"))
            for job in jobs
        ]
        try:
            outcomes = self._decide_reconnecting(jobs, texts, now)
        except DatabaseError:
            log.exception("Database unavailable for a batch of %d AUTH checks", len(jobs))
            outcomes = [Outcome(Reason.TEMPORARY_FAILURE) for _ in jobs]
        except Exception:
            log.exception("A batch of %d AUTH checks failed", len(jobs))
            outcomes = [Outcome(Reason.TEMPORARY_FAILURE) for _ in jobs]
        records = [
            _record(job, password, outcome, now)
            for job, (_, password), outcome in zip(jobs, texts, outcomes, strict=True)
        ]
        for record in records:
            self.pending.add(record)
        return CheckedBatch(outcomes, records)

    def _decide_reconnecting(self, jobs: list[AuthJob], texts: list[tuple[str, str]], now: datetime) -> list[Outcome]:
        """``_decide``, once more on a new connection if the one it had died while
        idle (the database restarted, a proxy closed it): otherwise the first AUTHs
        after an outage nobody saw were answered 454. The reads change nothing, so
        reading again is safe; a connection that could not be made is not tried
        twice, so AUTHs during an outage are not held for two connect timeouts."""
        had_connection = connection.connection is not None
        try:
            return self._decide(jobs, texts, now)
        except (OperationalError, InterfaceError):
            if not had_connection:
                raise
            log.warning("The checker's database connection was lost; reading again on a new one")
            connection.close()
            return self._decide(jobs, texts, now)

    def _decide(self, jobs: list[AuthJob], texts: list[tuple[str, str]], now: datetime) -> list[Outcome]:
        failures = self._failure_counts(jobs, now)
        lookup = self._lookup(texts)
        outcomes = []
        for job, (username, password) in zip(jobs, texts, strict=True):
            client = job.peer.client_network or ""
            if job.rate_limit is not None and failures.get(client, 0) >= job.rate_limit.failures:
                outcome = Outcome(Reason.RATE_LIMITED)
            else:
                outcome = validate(username, password, lookup, now)
            if outcome.reason.value in CREDENTIAL_FAILURES:
                failures[client] = failures.get(client, 0) + 1  # later jobs in this batch see it
            outcomes.append(outcome)
        return outcomes

    def _failure_counts(self, jobs: list[AuthJob], now: datetime) -> dict[str, int]:
        limited = [
            (job.rate_limit, job.peer.client_network)
            for job in jobs
            if job.rate_limit is not None and job.peer.client_network
        ]
        if not limited:
            return {}
        since = now - max(limit.window for limit, _ in limited)
        enough = max(limit.failures for limit, _ in limited)
        clients = {client for _, client in limited}
        # Pending first, then the database: a failure committed (and forgotten) in
        # between is then in the database's answer; read the other way round, it
        # could be in neither.
        pending = self.pending.identities(clients, since)
        committed = recent_failures(clients, since, enough)
        return {client: len(committed.get(client, set()) | pending.get(client, set())) for client in clients}

    def _lookup(self, texts: list[tuple[str, str]]) -> Lookup:
        """Key and inbox facts for this batch: from the cache when fresh, else read
        (one query for the keys, one for the inboxes, whatever the batch size).
        Every attempt whose formats are valid has both looked up, so the failure
        reasons cost the same."""
        clock = time.monotonic()  # before the read: the cache's bound starts here
        key_facts: dict[str, KeyFacts | None] = {}
        inbox_facts: dict[str, InboxFacts | None] = {}
        missing_keys: set[str] = set()
        missing_inboxes: set[str] = set()
        for username, password in texts:
            inbox_name = lookup_name_if_well_formed(username, password)
            if inbox_name is not None:
                digest = keys.digest_key(password)
                if digest not in key_facts:
                    hit, facts = self.keys.fresh(digest, clock)
                    key_facts[digest] = facts
                    if not hit:
                        missing_keys.add(digest)
                if inbox_name not in inbox_facts:
                    hit, inbox = self.inboxes.fresh(inbox_name, clock)
                    inbox_facts[inbox_name] = inbox
                    if not hit:
                        missing_inboxes.add(inbox_name)
        if missing_keys or missing_inboxes:
            found_keys, found_inboxes = fetch_facts(missing_keys, missing_inboxes)
            for digest in missing_keys:
                key_facts[digest] = found_keys.get(digest)
                self.keys.store(digest, key_facts[digest], clock)
            for inbox_name in missing_inboxes:
                inbox_facts[inbox_name] = found_inboxes.get(inbox_name)
                self.inboxes.store(inbox_name, inbox_facts[inbox_name], clock)
        return lambda inbox_name, digest: (key_facts.get(digest), inbox_facts.get(inbox_name))


def _record(job: AuthJob, password: str, outcome: Outcome, now: datetime) -> AttemptRecord:
    organization = (
        outcome.key.organization_id if outcome.key else outcome.inbox.organization_id if outcome.inbox else None
    )
    return AttemptRecord.build(
        peer=job.peer,
        when=now,
        mechanism=job.mechanism,
        username=job.username,
        key_prefix=keys.visible_prefix(password) if keys.is_well_formed(password) else "",
        reason=outcome.reason,
        api_key_id=outcome.key.id if outcome.key else None,
        inbox_id=outcome.inbox.id if outcome.inbox else None,
        organization_id=organization,
    )
