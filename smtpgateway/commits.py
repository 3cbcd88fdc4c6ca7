"""Group commit: the gateway's database work, done in batches.

Every SMTP event that needs the database becomes a job: an AUTH to check and
record (:class:`AuthJob`), a message to store (:class:`StoreJob`), an attempt to
record that never reached validation (:class:`RecordJob`), or a nudge to write
kept records (:class:`FlushJob`). A committer thread takes all the jobs waiting
and runs them with :func:`process`: one query for the rate-limit counts, one for
the keys, one for the inboxes, then every AuthAttempt, every ``last_used_at`` and
every message in ONE transaction. The server answers each session only after
that transaction has committed, so a ``235`` means the attempt is recorded and a
``250`` means the message is stored, while many sessions share one commit (and
one fsync). A batch of one is the same code path.

If the batch transaction fails on bad data (an IntegrityError), each job is run
alone, so one job cannot fail the others. If the database is unavailable, every
job in the batch fails fast: AUTHs get TEMPORARY_FAILURE and their records are
kept by the recorder; messages raise, and the client gets a 451.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Union

from django.db import DatabaseError, IntegrityError, transaction
from django.utils import timezone

from apikeys import keys
from apikeys.models import ApiKey
from inboxes.models import Message
from smtpgateway.auth import Lookups, Outcome, Peer, recent_failures, validate
from smtpgateway.limits import RateLimit
from smtpgateway.models import AuthAttempt
from smtpgateway.reasons import CREDENTIAL_FAILURES, Reason
from smtpgateway.recorder import AttemptRecord, recorder
from smtpgateway.submission import Submission, message_row

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AuthJob:
    """Check and record one AUTH. ``rate_limit`` is None for exempt addresses.
    Result: an :class:`Outcome`."""

    peer: Peer
    mechanism: str
    username: bytes
    password: bytes
    rate_limit: RateLimit | None

    def __repr__(self) -> str:  # never show the secret
        return f"AuthJob({self.peer.session_id}, {self.mechanism})"


@dataclass(frozen=True, slots=True)
class RecordJob:
    """Record an attempt that never reached validation (MALFORMED, ABORTED, ...)."""

    peer: Peer
    mechanism: str
    username: bytes
    reason: Reason


@dataclass(frozen=True, slots=True)
class StoreJob:
    """Store one message. Result: its queue id; raises DatabaseError if not stored."""

    submission: Submission


@dataclass(frozen=True, slots=True)
class FlushJob:
    """Write the records the recorder kept while the database was away."""


Job = Union[AuthJob, RecordJob, StoreJob, FlushJob]
Result = Union[Outcome, str, None, DatabaseError]


def process(jobs: list[Job]) -> list[Result]:
    """Run a batch; one result per job, in order (a DatabaseError result means that
    job failed)."""
    try:
        return _commit_batch(jobs)
    except IntegrityError:
        if len(jobs) == 1:
            return _fail_fast(jobs)
        log.warning("A batch of %d failed on its data; running each job alone", len(jobs))
        return [process([job])[0] for job in jobs]
    except DatabaseError:
        log.exception("Database unavailable for a batch of %d jobs", len(jobs))
        return _fail_fast(jobs)


def _texts(job: AuthJob) -> tuple[str, str]:
    return job.username.decode("utf-8", errors="replace"), job.password.decode("ascii", errors="replace")


def _auth_record(job: AuthJob, secret_text: str, outcome: Outcome, when: timezone.datetime) -> AttemptRecord:
    organization = outcome.key.organization_id if outcome.key else outcome.inbox.organization_id if outcome.inbox else None
    return AttemptRecord.build(
        peer=job.peer,
        when=when,
        mechanism=job.mechanism,
        username=job.username,
        key_prefix=keys.visible_prefix(secret_text) if keys.is_well_formed(secret_text) else "",
        reason=outcome.reason,
        api_key_id=outcome.key.id if outcome.key else None,
        inbox_id=outcome.inbox.id if outcome.inbox else None,
        organization_id=organization,
    )


def _unvalidated_record(job: RecordJob, when: timezone.datetime) -> AttemptRecord:
    return AttemptRecord.build(peer=job.peer, when=when, mechanism=job.mechanism, username=job.username, reason=job.reason)


def _commit_batch(jobs: list[Job]) -> list[Result]:
    now = timezone.now()
    auth_jobs = [job for job in jobs if isinstance(job, AuthJob)]
    limited = [job for job in auth_jobs if job.rate_limit is not None]
    failures: dict[str, int] = {}
    if limited:
        window = max(job.rate_limit.window for job in limited)  # type: ignore[union-attr]
        failures = recent_failures({job.peer.remote_addr for job in limited if job.peer.remote_addr}, now - window)
    texts = {id(job): _texts(job) for job in auth_jobs}  # decoded once per job
    lookups = Lookups(list(texts.values())) if auth_jobs else None

    results: list[Result] = []
    records: list[AttemptRecord] = []
    touched_keys: set[int] = set()
    messages: list[Message] = []
    for job in jobs:
        if isinstance(job, AuthJob):
            address = job.peer.remote_addr or ""
            if job.rate_limit is not None and failures.get(address, 0) >= job.rate_limit.failures:
                outcome = Outcome(Reason.RATE_LIMITED)
            else:
                assert lookups is not None
                outcome = validate(*texts[id(job)], lookups, now)
            if outcome.reason.value in CREDENTIAL_FAILURES:
                failures[address] = failures.get(address, 0) + 1  # later jobs in this batch see it
            if outcome.success:
                touched_keys.add(outcome.key.id)  # type: ignore[union-attr]
            records.append(_auth_record(job, texts[id(job)][1], outcome, now))
            results.append(outcome)
        elif isinstance(job, RecordJob):
            records.append(_unvalidated_record(job, now))
            results.append(None)
        elif isinstance(job, StoreJob):
            row = message_row(job.submission)
            messages.append(row)
            results.append(row.queue_id)
        else:
            results.append(None)

    kept = recorder.drain()  # written first, in this transaction; put back if it fails
    try:
        with transaction.atomic():
            if kept or records:
                AuthAttempt.objects.bulk_create([record.to_row() for record in kept + records])
            if touched_keys:
                ApiKey.objects.filter(pk__in=touched_keys).update(last_used_at=now)
            if messages:
                Message.objects.bulk_create(messages)
    except BaseException:
        recorder.restore(kept)
        raise
    if kept:
        log.info("Wrote %d kept AuthAttempt records", len(kept))
    return results


def _fail_fast(jobs: list[Job]) -> list[Result]:
    """The database is unavailable: nothing of this batch was written."""
    now = timezone.now()
    results: list[Result] = []
    for job in jobs:
        if isinstance(job, AuthJob):
            outcome = Outcome(Reason.TEMPORARY_FAILURE)
            recorder.keep(_auth_record(job, _texts(job)[1], outcome, now))
            results.append(outcome)
        elif isinstance(job, RecordJob):
            recorder.keep(_unvalidated_record(job, now))
            results.append(None)
        elif isinstance(job, StoreJob):
            results.append(DatabaseError("message not stored: database unavailable"))
        else:
            results.append(None)
    return results
