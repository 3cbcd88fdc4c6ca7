"""The database threads connect when they start, not when its first client comes:
on PostgreSQL connecting takes ~12 ms and the first reads ~8 ms more, which the
first AUTHs after every start or deploy would otherwise wait for."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator

import pytest
from django.db import OperationalError, connection

from smtpgateway.storage.threads import DatabaseThreads, _warm

COMMITTERS = 2


def open_connections() -> Callable[[], int]:
    """How many connections the database has from this process's threads (on
    SQLite: this process's open handles on the database file; on PostgreSQL:
    the backends of this database other than the test's own)."""
    if connection.vendor == "sqlite":
        # SQLite keeps a closed connection's file open while another connection
        # of the process holds a lock on it: the test's own must not be open.
        connection.close()
        path = os.path.realpath(connection.settings_dict["NAME"])

        def count() -> int:
            handles = 0
            for fd in os.listdir("/proc/self/fd"):
                try:
                    handles += os.readlink(f"/proc/self/fd/{fd}") == path
                except OSError:  # closed while we looked
                    pass
            return handles

        return count

    def count_backends() -> int:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            return int(cursor.fetchone()[0])

    return count_backends


def reaches(count: Callable[[], int], expected: int, timeout: float = 10.0) -> int:
    """``count()`` once it equals ``expected``, or its last value after ``timeout``
    (a PostgreSQL backend stays listed for a moment after its client left)."""
    deadline = time.monotonic() + timeout
    while (value := count()) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


def steady(count: Callable[[], int]) -> int:
    """``count()`` once two readings 0.3 s apart agree: backends of earlier tests'
    connections may still be leaving."""
    previous = count()
    for _ in range(50):
        time.sleep(0.3)
        if (value := count()) == previous:
            return value
        previous = value
    return previous


def test_every_thread_connects_before_any_job(transactional_db: None) -> None:
    count = open_connections()
    before = steady(count)
    threads = DatabaseThreads(committers=COMMITTERS, auth_cache_seconds=1.0)
    try:
        assert reaches(count, before + 1 + COMMITTERS) == before + 1 + COMMITTERS  # the checker and each committer
    finally:
        threads.shutdown()
    assert reaches(count, before) == before  # and each thread closes its own on shutdown


@pytest.fixture
def threads_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """What the database threads log, kept from the process's own log handler (which
    writes from a thread of its own, after the test's output is captured)."""
    logger = logging.getLogger("smtpgateway.storage.threads")
    logger.addHandler(caplog.handler)
    logger.propagate = False
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)
        logger.propagate = True


def test_a_database_not_there_at_start_is_logged_not_fatal(threads_log: pytest.LogCaptureFixture) -> None:
    """The threads start anyway: each batch connects again, as after a lost
    connection (test_database_faults.py covers the batches themselves)."""

    def refused() -> None:
        raise OperationalError("connection refused")

    _warm(refused)
    assert [record.getMessage() for record in threads_log.records] == [
        "Database not reachable at start (OperationalError): the first batch will try again"
    ]


def test_a_failing_warm_up_does_not_end_the_thread(threads_log: pytest.LogCaptureFixture) -> None:
    """Whatever goes wrong while warming up is logged, and the thread goes on to
    serve its queue: a thread that died there would leave every session waiting."""

    def broken() -> None:
        raise RuntimeError("a bug")

    _warm(broken)
    assert [(record.levelname, record.getMessage()) for record in threads_log.records] == [
        ("ERROR", "Warming up the database connection failed")
    ]
    assert threads_log.records[0].exc_info is not None
