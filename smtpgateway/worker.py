"""Running the gateway's synchronous database work off the event loop.

Django's ORM is synchronous. Each SMTP event that needs the database hands one
plain function (a "unit") to :class:`DatabaseWorker`, which runs it in a thread of
its own pool and awaits the result, so the event loop keeps serving every other
session meanwhile. Each thread holds its own database connection.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, TypeVar

from django.db import close_old_connections, connections, reset_queries

T = TypeVar("T")
log = logging.getLogger(__name__)


def _run_unit(unit: Callable[..., T], *args: Any) -> T:
    # What Django does at the start of each web request, for each unit: drop a
    # connection that broke (say, the database restarted) or outlived
    # CONN_MAX_AGE, so the unit reconnects instead of failing again; and, under
    # DEBUG, forget the previous unit's queries (Django keeps up to 9,000 per
    # connection, megabytes in a long-lived thread).
    reset_queries()
    close_old_connections()
    return unit(*args)


class DatabaseWorker:
    def __init__(self, threads: int) -> None:
        self._threads = max(1, threads)
        self._executor = ThreadPoolExecutor(max_workers=self._threads, thread_name_prefix="smtp-db")

    async def run(self, unit: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(_run_unit, unit, *args))

    def submit(self, unit: Callable[..., Any], *args: Any) -> None:
        """Run a unit without waiting for it (for records written on behalf of a
        session that is already gone). Its failure is logged, not raised."""
        future = self._executor.submit(_run_unit, unit, *args)
        future.add_done_callback(_log_failure)

    def shutdown(self) -> None:
        """Finish every submitted unit, then close each thread's connections.

        The barrier makes each of the pool's threads take exactly one closing
        task (a thread holds its own connection; no other thread can close it)."""
        barrier = threading.Barrier(self._threads)

        def close_connections() -> None:
            connections.close_all()
            try:
                barrier.wait(timeout=10)
            except threading.BrokenBarrierError:
                pass

        for _ in range(self._threads):
            self._executor.submit(close_connections)
        self._executor.shutdown(wait=True)


def _log_failure(future: Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("Background database unit failed", exc_info=future.exception())
