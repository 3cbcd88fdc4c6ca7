"""Real database faults for tests: another connection holding the write lock, an
outage, a trigger that refuses some rows."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator

import pytest
from django.db import connection

LOCKED_TABLES = ("smtpgateway_authattempt", "inboxes_message", "apikeys_apikey")


@contextlib.contextmanager
def write_lock() -> Iterator[None]:
    """Hold the database's write lock (SQLite) or exclusive table locks
    (PostgreSQL) from a separate connection until the block ends."""
    settings = connection.settings_dict
    if connection.vendor == "sqlite":
        holder = sqlite3.connect(settings["NAME"], isolation_level=None, check_same_thread=False)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            holder.execute("ROLLBACK")
            holder.close()
    else:
        import psycopg

        locker = psycopg.connect(
            host=settings["HOST"] or None,
            port=settings["PORT"] or None,
            user=settings["USER"] or None,
            password=settings["PASSWORD"] or None,
            dbname=settings["NAME"],
        )
        locker.execute("BEGIN")
        locker.execute(f"LOCK TABLE {', '.join(LOCKED_TABLES)} IN EXCLUSIVE MODE")
        try:
            yield
        finally:
            locker.rollback()
            locker.close()


def release_later(seconds: float) -> tuple[threading.Thread, threading.Event]:
    """Take the lock now; release it after ``seconds`` in a background thread."""
    taken = threading.Event()

    def hold() -> None:
        with write_lock():
            taken.set()
            threading.Event().wait(seconds)

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert taken.wait(10)
    return thread, taken


def shorten_lock_timeout(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Make connections opened from now on give up on a lock after ``seconds``."""
    options = connection.settings_dict["OPTIONS"]
    if connection.vendor == "sqlite":
        monkeypatch.setitem(options, "timeout", seconds)
    else:
        ms = int(seconds * 1000)
        monkeypatch.setitem(options, "options", f"-c lock_timeout={ms} -c statement_timeout={ms}")


@contextlib.contextmanager
def postgresql_outage() -> Iterator[None]:
    """A real outage as the gateway sees it: its connections are terminated and
    new ones refused, until the block ends. The test's own connection survives.
    Driven from a connection to the ``postgres`` database (PostgreSQL will not
    disallow connections to the database one is connected to)."""
    import psycopg

    settings = connection.settings_dict
    name = settings["NAME"]
    admin = psycopg.connect(
        host=settings["HOST"] or None,
        port=settings["PORT"] or None,
        user=settings["USER"] or None,
        password=settings["PASSWORD"] or None,
        dbname="postgres",
        autocommit=True,
    )
    own_pid = connection.cursor().connection.info.backend_pid
    try:
        admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> %s", [name, own_pid]
        )
        yield
    finally:
        admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
        admin.close()


@contextlib.contextmanager
def refused_attempts(username: str) -> Iterator[None]:
    """The database refuses, on their data, the AuthAttempt rows that carry this
    username: a BEFORE INSERT trigger raising a constraint error (SQLite) or a
    data exception (PostgreSQL), as a value a column cannot hold would."""
    assert username.replace("-", "").isalnum()  # spelled into the SQL below
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute(
                "CREATE TRIGGER test_refuse_attempt BEFORE INSERT ON smtpgateway_authattempt "
                f"WHEN NEW.username = '{username}' BEGIN SELECT RAISE(ABORT, 'refused by a test trigger'); END"
            )
            drop = ["DROP TRIGGER test_refuse_attempt"]
        else:
            cursor.execute(
                "CREATE FUNCTION test_refuse_attempt() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                f"IF NEW.username = '{username}' THEN "
                "RAISE EXCEPTION 'refused by a test trigger' USING ERRCODE = 'data_exception'; "
                "END IF; RETURN NEW; END $$"
            )
            cursor.execute(
                "CREATE TRIGGER test_refuse_attempt BEFORE INSERT ON smtpgateway_authattempt "
                "FOR EACH ROW EXECUTE FUNCTION test_refuse_attempt()"
            )
            drop = [
                "DROP TRIGGER test_refuse_attempt ON smtpgateway_authattempt",
                "DROP FUNCTION test_refuse_attempt()",
            ]
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            for statement in drop:
                cursor.execute(statement)
