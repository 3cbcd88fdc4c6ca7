"""Running the gateway's database work off the event loop, in batches.

Django's ORM is synchronous. Each SMTP event that needs the database puts a job
on a queue and awaits its future; threads take every job waiting, up to
``MAX_BATCH``, run them as one batch, and resolve the futures on the event loop.
The loop never waits on the database; under load, batches grow and many
sessions share each query and each commit.

* One checker thread decides AUTH attempts (``smtpgateway.auth.checker``: reads only)
  and hands their records to the committers. A success is answered at once; a
  counted failure only once its record is committed, so that every gateway on
  the database counts it before its client can try again (the rate limit is
  exact across processes, whatever ``SMTP_AUTH_FAILURE_DELAY``).
* ``SMTP_DB_WORKERS`` committer threads (``smtpgateway.storage.commits``) write records
  and messages, each thread with its own database connection: one suits SQLite
  (a single writer); PostgreSQL can use more. A message is answered after its
  commit.

Reads and writes on separate connections: an AUTH reply never waits behind a
commit, an fsync or a WAL checkpoint. Each thread connects as it starts (the
checker also runs its reads once), so the first clients after a start do not
wait for that.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from django.db import DatabaseError, close_old_connections, connection, connections, reset_queries

from smtpgateway.auth.checker import Checker, PendingFailures
from smtpgateway.auth.rules import Outcome
from smtpgateway.metrics import NOTHING, Observable
from smtpgateway.runtime import glibc
from smtpgateway.storage.commits import LastUsedWrites, process
from smtpgateway.storage.jobs import AuthJob, Job, RecordsJob, StoreJob

log = logging.getLogger(__name__)

MAX_BATCH = 256
# How long a committer lets AuthAttempt records gather before it commits them
# (nobody waits on them: the AUTH is answered, and its failure already counts
# in PendingFailures). Under load this makes fewer, larger transactions, and
# less committer CPU per session (docs/performance.md). A message, or any job
# someone waits for, ends the wait at once.
RECORDS_LINGER = 0.02
# What a commit is allowed to take before held-back answers fall due.
COMMIT_TIME = 0.005
LARGE_BATCH_BYTES = 4 * 1024 * 1024
_STOP = object()


def _load_trim() -> Callable[[], None]:
    """glibc's malloc_trim: hand freed heap memory back to the system. After a
    batch that stored megabytes of messages, this thread's arena would otherwise
    keep that memory for good."""
    trim = glibc.function("malloc_trim")
    return (lambda: None) if trim is None else (lambda: trim(0))


_trim_heap = _load_trim()


# An answer for a session on its loop: (loop, future, result).
Answer = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Any]


class Pending(NamedTuple):
    """A job on a queue, with whom to answer: ``future`` on ``loop`` gets the
    job's result (None: nobody waits); ``then`` are answers of other jobs held
    back until this one is done (AUTH failures, until their records commit)."""

    job: Any
    loop: asyncio.AbstractEventLoop | None = None
    future: asyncio.Future[Any] | None = None
    then: tuple[Answer, ...] = ()
    # With ``then``: the time.monotonic() by which those answers are due.
    due: float = 0.0


class DatabaseThreads:
    """The checker thread and the committer threads, and the queues that feed them."""

    def __init__(
        self,
        committers: int,
        auth_cache_seconds: float,
        batch_durations: tuple[Observable, Observable] = (NOTHING, NOTHING),
    ) -> None:
        """``batch_durations``: where the checker's and the committers' batch
        durations go (``GatewayMetrics.check_batch``, ``commit_batch``)."""
        self.pending_failures = PendingFailures()
        self._last_used = LastUsedWrites()
        self._checker = Checker(auth_cache_seconds, self.pending_failures)
        self._checks: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._commits: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._unfinished = 0  # jobs put and not yet done, for settled()
        self._settled = threading.Condition()
        # One checker: its caches are not shared between threads, and one batch of
        # reads at a time keeps up under full load.
        self._check_threads = [
            threading.Thread(
                target=self._serve,
                args=(self._checks, self._check_batch, self._checker.warm_up, batch_durations[0]),
                name="smtp-check",
                daemon=True,
            )
        ]
        self._commit_threads = [
            threading.Thread(
                target=self._serve,
                args=(self._commits, self._commit_batch, _connect, batch_durations[1], RECORDS_LINGER),
                name=f"smtp-commit-{n}",
                daemon=True,
            )
            for n in range(max(1, committers))
        ]
        for thread in self._check_threads + self._commit_threads:
            thread.start()

    async def check(self, job: AuthJob) -> Outcome:
        """Decide an AUTH attempt (its record is committed right after; a
        counted failure's before this returns)."""
        outcome: Outcome = await self._await(self._checks, job)
        return outcome

    async def commit(self, job: Job) -> Any:
        """Run ``job`` in the next batch; return its result once committed
        (a StoreJob's: the queue id, or NOT_STORED)."""
        return await self._await(self._commits, job)

    def submit(self, job: Job) -> None:
        """Run ``job`` without waiting for it."""
        self._put(self._commits, Pending(job))

    def settled(self, timeout: float) -> bool:
        """Wait until every job put so far is done (committed or failed), for
        tests that read what a reply's record says. False after ``timeout``."""
        with self._settled:
            return self._settled.wait_for(lambda: self._unfinished == 0, timeout)

    def shutdown(self) -> None:
        """Finish every queued job, then stop the threads (each closes its own
        database connection). Checks first: they hand records to the committers."""
        for threads, jobs in ((self._check_threads, self._checks), (self._commit_threads, self._commits)):
            for _ in threads:
                jobs.put(_STOP)
            for thread in threads:
                thread.join()

    async def _await(self, jobs: queue.SimpleQueue[Any], job: Any) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._put(jobs, Pending(job, loop, future))
        result = await future
        if isinstance(result, Exception):
            raise result
        return result

    def _put(self, jobs: queue.SimpleQueue[Any], item: Pending) -> None:
        with self._settled:
            self._unfinished += 1
        jobs.put(item)

    def _done(self, count: int) -> None:
        with self._settled:
            self._unfinished -= count
            if self._unfinished == 0:
                self._settled.notify_all()

    def _serve(
        self,
        jobs: queue.SimpleQueue[Any],
        run_batch: Callable[[list[Pending]], None],
        warm_up: Callable[[], None],
        durations: Observable,
        linger: float = 0.0,
    ) -> None:
        glibc.name_native_thread()
        try:
            _warm(warm_up)
            while True:
                batch, stop_after = _take_batch(jobs, linger)
                if batch:
                    large = _stored_bytes(batch) > LARGE_BATCH_BYTES
                    # What Django does at the start of each web request: drop a
                    # connection that broke (the database restarted, say) or outlived
                    # CONN_MAX_AGE, so this batch reconnects; and under DEBUG forget the
                    # previous batch's queries (Django keeps up to 9,000 per connection,
                    # megabytes in a long-lived thread).
                    reset_queries()
                    started = time.perf_counter()
                    close_old_connections()
                    try:
                        run_batch(batch)
                    except Exception as error:  # a bug: logged, no session left waiting, the thread goes on
                        log.exception("A batch of %d database jobs failed", len(batch))
                        _answer(batch, [error] * len(batch))
                    finally:
                        durations.observe(time.perf_counter() - started)
                        self._done(len(batch))
                    # Let go of the jobs (a large message, an AUTH's password) now, not
                    # when the next batch replaces them; then give freed memory back.
                    del batch
                    if large:
                        _trim_heap()
                if stop_after:
                    return
        finally:
            connections.close_all()

    def _check_batch(self, batch: list[Pending]) -> None:
        try:
            checked = self._checker.check_batch([item.job for item in batch])
        except Exception as error:  # a bug: every waiting session gets a 4xx, none hangs
            log.exception("A batch of %d AUTH checks failed", len(batch))
            _answer(batch, [error] * len(batch))
            return
        # Queued before any answer: shutdown drains this queue after the checks.
        # A counted failure's answer waits for its record's commit (milliseconds:
        # a job with answers ends the committer's linger); the rest linger.
        held = [record.credential_failure for record in checked.records]
        now = [(item, outcome) for item, outcome, hold in zip(batch, checked.outcomes, held, strict=True) if not hold]
        lingering = tuple(record for record, hold in zip(checked.records, held, strict=True) if not hold)
        if lingering:
            self.submit(RecordsJob(lingering))
        if any(held):
            failed = tuple(record for record, hold in zip(checked.records, held, strict=True) if hold)
            answers = tuple(
                (item.loop, item.future, outcome)
                for item, outcome, hold in zip(batch, checked.outcomes, held, strict=True)
                if hold and item.loop is not None and item.future is not None
            )
            due = min(item.job.reply_due for item, hold in zip(batch, held, strict=True) if hold)
            self._put(self._commits, Pending(RecordsJob(failed), then=answers, due=due))
        _answer([item for item, _ in now], [outcome for _, outcome in now])

    def _commit_batch(self, batch: list[Pending]) -> None:
        try:
            results = process([item.job for item in batch], self.pending_failures, self._last_used)
        except Exception as error:  # a bug: every waiting session gets a 4xx, none hangs
            log.exception("A batch of %d database jobs failed", len(batch))
            _answer(batch, [error] * len(batch))
        else:
            _answer(batch, results)
        # Whatever became of the records (committed, or kept while the database
        # is away): the failures they hold back are answered now.
        for item in batch:
            for loop, future, outcome in item.then:
                _release(loop, future, outcome)


def _connect() -> None:
    connection.ensure_connection()  # this thread's connection


def _warm(warm_up: Callable[[], None]) -> None:
    """Connect (and for the checker, run its reads once) before the first
    client needs it: on PostgreSQL connecting and the first reads take long
    enough that the first AUTHs after a start would otherwise wait for them. A database that is not there yet is only logged: each batch connects
    again, as it always does after a lost connection."""
    try:
        warm_up()
    except DatabaseError as error:
        log.warning("Database not reachable at start (%s): the first batch will try again", type(error).__name__)
    except Exception:  # a bug: logged, and the thread serves on (dead, it would hang every session)
        log.exception("Warming up the database connection failed")


def _take_batch(jobs: queue.SimpleQueue[Any], linger: float = 0.0) -> tuple[list[Pending], bool]:
    """Every job waiting (at least one, at most MAX_BATCH), and whether a stop
    request came after them. While the batch holds only records that nobody
    waits for yet, wait up to ``linger`` seconds for more: less if answers
    held back by some of them fall due sooner."""
    first = jobs.get()
    if first is _STOP:
        return [], True
    batch = [first]
    lingering = linger > 0 and _unawaited_records(first)
    deadline = _linger_deadline(first, time.monotonic() + linger)
    while len(batch) < MAX_BATCH:
        try:
            item = jobs.get_nowait()
        except queue.Empty:
            remaining = deadline - time.monotonic()
            if not lingering or remaining <= 0:
                break
            try:
                item = jobs.get(timeout=remaining)
            except queue.Empty:
                break
        if item is _STOP:
            return batch, True
        batch.append(item)
        lingering = lingering and _unawaited_records(item)
        deadline = _linger_deadline(item, deadline)
    return batch, False


def _unawaited_records(item: Pending) -> bool:
    return isinstance(item.job, RecordsJob) and item.future is None


def _linger_deadline(item: Pending, deadline: float) -> float:
    """A batch holding back answers commits in time for them: a failure
    delay of a second lets its record share the usual lingering commit; with
    none, it is committed at once."""
    return min(deadline, item.due - COMMIT_TIME) if item.then else deadline


def _stored_bytes(batch: list[Pending]) -> int:
    return sum(len(item.job.submission.content) for item in batch if isinstance(item.job, StoreJob))


def _answer(batch: list[Pending], results: list[Any]) -> None:
    for item, result in zip(batch, results, strict=True):
        if item.future is not None and item.loop is not None:
            _release(item.loop, item.future, result)


def _release(loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], result: Any) -> None:
    if not loop.is_closed():
        loop.call_soon_threadsafe(_resolve, future, result)


def _resolve(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():  # the session may have gone meanwhile
        future.set_result(result)
