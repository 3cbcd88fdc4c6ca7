"""Group commit: the gateway's database writes, done in batches.

Every write is a job: the records of a batch of AUTH checks
(:class:`RecordsJob`, from ``smtpgateway.checks``; also one record of an attempt
that never reached validation), a message to store (:class:`StoreJob`), or a
nudge to write kept records (:class:`FlushJob`). A committer thread takes all the
jobs waiting and runs them with :func:`process`: every AuthAttempt, every
``last_used_at`` and every message in ONE transaction. A session waiting for a
message is answered only after that transaction has committed, so a ``250``
means the message is stored, while many sessions share one commit (and one
fsync). A batch of one is the same code path.

If the batch transaction fails on bad data (an IntegrityError), each job is run
alone, so one job cannot fail the others. If the database is unavailable, every
job in the batch fails fast: its AuthAttempt records are kept by the recorder
(and logged) until a later batch writes them; messages fail, and the client gets
a 451.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Union

from django.db import DatabaseError, IntegrityError, transaction

from apikeys.models import ApiKey
from smtpgateway.checks import PendingFailures
from smtpgateway.inserts import insert_rows
from smtpgateway.models import AuthAttempt
from smtpgateway.recorder import AttemptRecord, recorder
from smtpgateway.store import NewMessage, insert_messages
from smtpgateway.submission import Submission, message_row

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RecordsJob:
    """Write AuthAttempt records, and set ``last_used_at`` of the keys that
    successful ones used."""

    records: tuple[AttemptRecord, ...]


@dataclass(frozen=True, slots=True)
class StoreJob:
    """Store one message. Result: its queue id; raises DatabaseError if not stored."""

    submission: Submission


@dataclass(frozen=True, slots=True)
class FlushJob:
    """Write the records the recorder kept while the database was away."""


Job = Union[RecordsJob, StoreJob, FlushJob]
Result = Union[str, None, DatabaseError]


def process(jobs: list[Job], pending: PendingFailures) -> list[Result]:
    """Run a batch; one result per job, in order (a DatabaseError result means that
    job failed). Records written are forgotten by ``pending``."""
    try:
        return _commit_batch(jobs, pending)
    except IntegrityError:
        if len(jobs) == 1:
            return _fail_fast(jobs)
        log.warning("A batch of %d failed on its data; running each job alone", len(jobs))
        return [process([job], pending)[0] for job in jobs]
    except DatabaseError:
        log.exception("Database unavailable for a batch of %d jobs", len(jobs))
        return _fail_fast(jobs)


def _commit_batch(jobs: list[Job], pending: PendingFailures) -> list[Result]:
    results: list[Result] = []
    records: list[AttemptRecord] = []
    messages: list[NewMessage] = []
    for job in jobs:
        if isinstance(job, RecordsJob):
            records.extend(job.records)
            results.append(None)
        elif isinstance(job, StoreJob):
            message = message_row(job.submission)
            messages.append(message)
            results.append(message.row.queue_id)
        else:
            results.append(None)

    kept = recorder.drain()  # written first, in this transaction; put back if it fails
    successes = [record for record in records if record.success and record.api_key_id is not None]
    try:
        with transaction.atomic():
            if kept or records:
                insert_attempts(kept + records)
            if successes:
                # One statement: a key used in several batches of this commit gets
                # the latest of their times (they are milliseconds apart).
                ApiKey.objects.filter(pk__in={record.api_key_id for record in successes}).update(
                    last_used_at=max(record.created_at for record in successes)
                )
            if messages:
                insert_messages(messages)
    except BaseException:
        recorder.restore(kept)
        raise
    pending.forget(kept + records)
    if kept:
        log.info("Wrote %d kept AuthAttempt records", len(kept))
    return results


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
            results.append(DatabaseError("message not stored: database unavailable"))
        else:
            results.append(None)
    return results
