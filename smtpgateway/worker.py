"""Running the gateway's database work off the event loop, in batches.

Django's ORM is synchronous. Each SMTP event that needs the database puts a job
(``smtpgateway.commits``) on a queue and awaits its future; committer threads take
every job waiting, up to ``MAX_BATCH``, run them as one batch (one transaction),
and resolve the futures on the event loop. The loop never waits on the database;
under load, batches grow and many sessions share each commit.

``SMTP_DB_WORKERS`` committer threads share the queue, each with its own database
connection: one suits SQLite (a single writer); PostgreSQL can use more.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import queue
import threading
from typing import Any, Callable

from django.db import close_old_connections, connections, reset_queries

from smtpgateway.commits import Job, StoreJob, process

log = logging.getLogger(__name__)

MAX_BATCH = 256
LARGE_BATCH_BYTES = 4 * 1024 * 1024
_STOP = object()


def _load_trim() -> Callable[[], None]:
    """glibc's malloc_trim: hand freed heap memory back to the system. After a
    batch that stored megabytes of messages, this thread's arena would otherwise
    keep that memory for good."""
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return lambda: None
    return lambda: trim(0)


_trim_heap = _load_trim()


class DatabaseWorker:
    def __init__(self, threads: int) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._run, name=f"smtp-commit-{n}", daemon=True) for n in range(max(1, threads))
        ]
        for thread in self._threads:
            thread.start()

    async def commit(self, job: Job) -> Any:
        """Run ``job`` in the next batch; return its result once committed.
        A failed store raises DatabaseError."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put((job, loop, future))
        result = await future
        if isinstance(result, Exception):
            raise result
        return result

    def submit(self, job: Job) -> None:
        """Run ``job`` without waiting for it (records written on behalf of a
        session that is already gone)."""
        self._queue.put((job, None, None))

    def shutdown(self) -> None:
        """Finish every queued job, then stop the threads (each closes its own
        database connection)."""
        for _ in self._threads:
            self._queue.put(_STOP)
        for thread in self._threads:
            thread.join()

    def _run(self) -> None:
        try:
            while True:
                first = self._queue.get()
                if first is _STOP:
                    return
                batch = [first]
                stop_after = False
                while len(batch) < MAX_BATCH:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is _STOP:
                        stop_after = True
                        break
                    batch.append(item)
                self._run_batch(batch)
                if stop_after:
                    return
        finally:
            connections.close_all()

    def _run_batch(self, batch: list[tuple[Job, asyncio.AbstractEventLoop | None, asyncio.Future[Any] | None]]) -> None:
        # What Django does at the start of each web request: drop a connection that
        # broke (the database restarted, say) or outlived CONN_MAX_AGE, so this batch
        # reconnects; and under DEBUG forget the previous batch's queries (Django
        # keeps up to 9,000 per connection, megabytes in a long-lived thread).
        reset_queries()
        close_old_connections()
        try:
            results = process([job for job, _, _ in batch])
        except Exception as error:  # a bug: every waiting session gets a 4xx, none hangs
            log.exception("A batch of %d database jobs failed", len(batch))
            results = [error] * len(batch)
        for (_, loop, future), result in zip(batch, results):
            if future is not None and loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(_resolve, future, result)
        if sum(len(job.submission.content) for job, _, _ in batch if isinstance(job, StoreJob)) > LARGE_BATCH_BYTES:
            _trim_heap()


def _resolve(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():  # the session may have gone meanwhile
        future.set_result(result)
