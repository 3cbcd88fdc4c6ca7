"""Group commit: the gateway's database writes, done in batches.

Every write is a job (``smtpgateway.storage.jobs``): the records of a batch of
AUTH checks (``RecordsJob``, from ``smtpgateway.auth.checker``; also one record
of an attempt that never reached validation), a message to store (``StoreJob``),
or a nudge to write kept records (``FlushJob``). A committer thread takes all the
jobs waiting and runs them with :func:`process`: every AuthAttempt, the
``last_used_at`` of keys due (:class:`LastUsedWrites`, to the second) and every
message in ONE transaction. A session waiting for a
message is answered only after that transaction has committed, so a ``250``
means the message is stored, while many sessions share one commit (and one
fsync). A batch of one is the same code path.

If the batch transaction fails on its data (an IntegrityError or DataError, or
a bug in preparing a job), each job is run alone, so one job cannot fail the
others; a record the database refuses even alone is logged in full and dropped,
a message refused alone is NOT_STORED (the client gets a 451). If the database
is unavailable, every job in the batch fails fast: its AuthAttempt records are
kept by the recorder (and logged) until a later batch writes them; messages are
NOT_STORED.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta

from django.db import DatabaseError, DataError, IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from apikeys.models import ApiKey
from smtpgateway.auth.checker import PendingFailures
from smtpgateway.models import AuthAttempt
from smtpgateway.storage.inserts import insert_rows
from smtpgateway.storage.jobs import (
    NOT_STORED,
    AttemptRecord,
    AuthorRefused,
    Held,
    HoldJob,
    Job,
    LimitReached,
    RecordsJob,
    ReleaseJob,
    StoreJob,
)
from smtpgateway.storage.message_inserts import NewMessage, insert_messages
from smtpgateway.storage.messages import message_row
from smtpgateway.storage.records import recorder
from smtpgateway.storage.sending_limits import release, take_hold, tally

log = logging.getLogger(__name__)


# A StoreJob's queue id, refusal or NOT_STORED; a HoldJob's Held or LimitReached
# (None: not reached); None for the others.
Result = str | AuthorRefused | Held | LimitReached | None

# ApiKey.last_used_at is kept to this resolution: a key in use is written about
# once a second, not by every commit. On PostgreSQL the committers used to queue
# on that one row's lock, each holding it until its commit's fsync, and on
# SQLite the UPDATE was a sizeable part of the committer's time.
LAST_USED_RESOLUTION = timedelta(seconds=1)


class LastUsedWrites:
    """The ``last_used_at`` this process last wrote per key, so that a commit
    writes only the keys whose stored time is a resolution or more behind.
    Shared by the committer threads; a race between two of them costs one
    redundant UPDATE at worst, which the UPDATE's own condition turns into a no-op
    (that condition also covers other processes)."""

    def __init__(self) -> None:
        self._written: dict[int, datetime] = {}

    def due(self, records: list[AttemptRecord]) -> dict[int, datetime]:
        """The keys these successful records used that are due, with their newest use."""
        newest: dict[int, datetime] = {}
        for record in records:
            key_id = record.api_key_id
            if key_id is not None and (key_id not in newest or record.created_at > newest[key_id]):
                newest[key_id] = record.created_at
        return {
            key_id: used
            for key_id, used in newest.items()
            if (written := self._written.get(key_id)) is None or used - written >= LAST_USED_RESOLUTION
        }

    def written(self, keys: Iterable[int], newest: datetime) -> None:
        """After the commit that wrote them, all with the batch's newest time."""
        self._written.update(dict.fromkeys(keys, newest))


def process(jobs: list[Job], pending: PendingFailures, last_used: LastUsedWrites) -> list[Result]:
    """Run a batch; one result per job, in order (NOT_STORED: that message was
    not stored). Records written are forgotten by ``pending``."""
    kept = recorder.drain()  # written first, in the same transaction
    try:
        return _commit_batch(jobs, kept, pending, last_used)
    except _REFUSED_DATA as error:
        log.warning("A batch of %d jobs failed on its data (%s); writing each alone", len(jobs), type(error).__name__)
    except DatabaseError:
        recorder.restore(kept)
        log.exception("Database unavailable for a batch of %d jobs", len(jobs))
        return _fail_fast(jobs)
    except Exception:  # a bug in preparing some job: the others must not fail with it
        log.exception("A batch of %d jobs failed; writing each alone", len(jobs))
    except BaseException:  # the thread is going down: the kept records stay kept
        recorder.restore(kept)
        raise
    if kept:
        _commit_alone(RecordsJob(tuple(kept)), pending, last_used)
    return [_commit_alone(job, pending, last_used) for job in jobs]


# The database refused a value, not the connection: retrying the same rows
# cannot succeed, so they are written apart from the others.
_REFUSED_DATA = (IntegrityError, DataError)


def _commit_alone(job: Job, pending: PendingFailures, last_used: LastUsedWrites) -> Result:
    """One job of a batch that failed on its data. A record refused even alone is
    logged in full and dropped, not kept: kept for retry, it would fail every
    later batch, messages included. Its failure still counts in ``pending``
    until the rate-limit window passes, so refused rows cannot dodge the limit."""
    try:
        return _commit_batch([job], [], pending, last_used)[0]
    except DatabaseError as error:
        if not isinstance(error, _REFUSED_DATA):
            log.exception("Database unavailable for a job")
            return _fail_fast([job])[0]
        refusal = f"{type(error).__name__}: {error}"
    except Exception as error:  # a bug in preparing this job
        log.exception("A database job failed")
        refusal = type(error).__name__
    if isinstance(job, RecordsJob):
        if len(job.records) == 1:
            record = job.records[0]
            log.error(
                "AuthAttempt refused by the database, dropped: %s (%s)",
                record.to_log_line(),
                refusal,
                extra=record.log_fields(),
            )
        else:  # find the refused one(s)
            for record in job.records:
                _commit_alone(RecordsJob((record,)), pending, last_used)
        return None
    if isinstance(job, StoreJob):
        log.error("Message refused by the database (%s)", refusal)
        return NOT_STORED
    return None


def _commit_batch(
    jobs: list[Job], kept: list[AttemptRecord], pending: PendingFailures, last_used: LastUsedWrites
) -> list[Result]:
    """``kept``: records the database could not take before; written first."""
    results: list[Result] = []
    records: list[AttemptRecord] = []
    messages: list[NewMessage] = []
    holds: list[tuple[int, HoldJob]] = []  # (index in results, job)
    given_back: list[int] = []  # ReleaseJob's, and those HoldJobs carry
    stored_holds: list[int] = []  # StoreJob's
    for job in jobs:
        if isinstance(job, RecordsJob):
            records.extend(job.records)
            results.append(None)
        elif isinstance(job, StoreJob):
            # Its holds go, stored or refused: stored, its Recipient rows count instead.
            stored_holds.extend(job.submission.hold_ids)
            message = message_row(job.submission)
            if isinstance(message, AuthorRefused):
                results.append(message)
                continue
            messages.append(message)
            results.append(message.row.queue_id)
        elif isinstance(job, HoldJob):
            holds.append((len(results), job))
            given_back.extend(job.released)
            results.append(None)
        elif isinstance(job, ReleaseJob):
            given_back.extend(job.hold_ids)
            results.append(None)
        else:
            results.append(None)

    due = last_used.due([record for record in records if record.success])
    # One time for all of them: uses in one commit are milliseconds apart.
    newest = max(due.values(), default=None)
    with transaction.atomic():
        # Holds first: on SQLite the first one's INSERT takes the write lock
        # before anything is counted (smtpgateway.storage.sending_limits).
        # Holds given back go before any is counted; a stored message's holds go
        # only with its Recipient rows (then always one of the two is counted).
        now = timezone.now()
        release(tuple(given_back))
        for index, hold in holds:
            results[index] = take_hold(hold, now)
        if kept or records:
            insert_attempts(kept + records)
        if newest is not None:
            _write_last_used(due.keys(), newest)
        if messages:
            insert_messages(messages)
            tally([(new.row.inbox_id, new.organization_pk, len(new.row.envelope_to)) for new in messages], now)
        release(tuple(stored_holds))
    if newest is not None:
        last_used.written(due.keys(), newest)
    pending.forget(kept + records)
    if kept:
        log.info("Wrote %d kept AuthAttempt records", len(kept))
    return results


def _write_last_used(keys: Iterable[int], newest: datetime) -> None:
    """One statement for the due keys. Rows already within the resolution of
    ``newest`` (written by another committer or gateway) are left alone, and
    not locked."""
    ApiKey.objects.filter(
        Q(last_used_at__isnull=True) | Q(last_used_at__lte=newest - LAST_USED_RESOLUTION), pk__in=keys
    ).update(last_used_at=newest)


# Of an AuthAttempt's fields only these need the backend's adaptation; the rest
# are plain values the drivers take as they are (cheaper than preparing each).
_ADAPTED_ATTEMPT_FIELDS = {"created_at", "remote_addr"}


def _attempt_value(field, record: AttemptRecord, connection):  # type: ignore[no-untyped-def]
    value = getattr(record, field.attname)
    return field.get_db_prep_save(value, connection) if field.name in _ADAPTED_ATTEMPT_FIELDS else value


def insert_attempts(records: list[AttemptRecord]) -> None:
    """INSERT the records as AuthAttempt rows: every attempt is written, so this is
    the committer's hottest step."""
    insert_rows(AuthAttempt, records, _attempt_value)


def _fail_fast(jobs: list[Job]) -> list[Result]:
    """The database is unavailable: nothing of this batch was written."""
    results: list[Result] = []
    for job in jobs:
        if isinstance(job, RecordsJob):
            for record in job.records:
                recorder.keep(record)
            results.append(None)
        elif isinstance(job, StoreJob):
            results.append(NOT_STORED)
        else:
            results.append(None)
    return results
