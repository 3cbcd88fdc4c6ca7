"""The gateway with a database that is slow or locked: the event loop keeps serving,
clients get 4xx replies with enhanced codes, and no record is lost."""

from __future__ import annotations

import logging
import smtplib
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from inboxes.models import Message
from smtpgateway.models import AuthAttempt
from smtpgateway.storage.records import recorder
from tests.dbfaults import refused_attempts, release_later, shorten_lock_timeout, write_lock
from tests.helpers import VALID_EMAIL, VALID_INBOX, VALID_KEY, LiveGateway, auth

LOCK_SECONDS = 1.5


def timed_auth(gateway: LiveGateway) -> tuple[str, float]:
    started = time.monotonic()
    with gateway.smtp(timeout=30) as client:
        _, reply = auth(client, "PLAIN", VALID_INBOX, VALID_KEY)
    return reply, time.monotonic() - started


def test_event_loop_keeps_serving_while_the_database_is_locked(gateway: LiveGateway) -> None:
    sessions = 8
    holder, _ = release_later(LOCK_SECONDS)
    started = time.monotonic()
    with ThreadPoolExecutor(sessions) as pool:
        waiting = [pool.submit(timed_auth, gateway) for _ in range(sessions)]
        time.sleep(0.3)  # every AUTH is now waiting on the database
        probe_started = time.monotonic()
        probe = gateway.wire()
        assert probe.command("EHLO probe.example").startswith("250 ")
        assert probe.command("NOOP") == "250 2.0.0 OK"
        probe_seconds = time.monotonic() - probe_started
        results = [future.result() for future in waiting]
    total = time.monotonic() - started
    holder.join()

    assert probe_seconds < 0.5, f"a NOOP took {probe_seconds:.2f}s while the database was locked"
    assert [reply for reply, _ in results] == ["235 2.7.0 Authentication successful"] * sessions
    # AUTH only reads, which the write lock does not block: answered during the lock.
    assert max(seconds for _, seconds in results) < LOCK_SECONDS, results
    assert total < LOCK_SECONDS + 2.0, f"{sessions} sessions took {total:.2f}s"
    # Their records waited for the lock, and were written once it went.
    gateway.settle()
    assert AuthAttempt.objects.filter(reason="OK").count() == sessions


def test_records_outlast_a_write_lock_beyond_the_timeout(
    gateway_factory: Any, scenarios: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    shorten_lock_timeout(monkeypatch, 0.5)
    gateway = gateway_factory()
    with write_lock():
        reply, seconds = timed_auth(gateway)
        assert reply == "235 2.7.0 Authentication successful" and seconds < 0.5  # the check only reads
        gateway.settle()  # the committer waited 0.5 s for the lock, then kept the record
        assert len(recorder) == 1
        assert not AuthAttempt.objects.exists()
    # The database is back: the next batch writes the kept record first.
    reply, _ = timed_auth(gateway)
    assert reply == "235 2.7.0 Authentication successful"
    gateway.settle()
    assert list(AuthAttempt.objects.order_by("created_at").values_list("reason", "success")) == [
        ("OK", True),
        ("OK", True),
    ]
    assert len(recorder) == 0


@pytest.mark.parametrize("body_size", [4, 300 * 1024], ids=["small", "large"])  # large: blob I/O or COPY
def test_store_failure_answers_451_and_stores_nothing(
    gateway_factory: Any, scenarios: None, monkeypatch: pytest.MonkeyPatch, body_size: int
) -> None:
    shorten_lock_timeout(monkeypatch, 0.5)
    gateway = gateway_factory()
    message = b"From: test@agentmail.dev\r\nSubject: during an outage\r\n\r\n" + b"0123456789 body\r\n" * (
        body_size // 17 + 1
    )
    with gateway.smtp(timeout=30) as client:
        auth(client, "PLAIN", VALID_INBOX, VALID_KEY)
        with write_lock():
            with pytest.raises(smtplib.SMTPDataError) as refused:
                client.sendmail(VALID_EMAIL, ["a@example.com"], message)
            assert refused.value.smtp_code == 451
            assert refused.value.smtp_error == b"4.3.0 Temporary failure, message not accepted, try again later"
        assert not Message.objects.exists()
        # Same session, database back: the retry is accepted and stored once.
        assert client.sendmail(VALID_EMAIL, ["a@example.com"], message) == {}
    assert Message.objects.get().subject == "during an outage"


def test_postgresql_outage_and_recovery(gateway_factory: Any, scenarios: None) -> None:
    """The database really gone (PostgreSQL refusing the gateway) and back."""
    from django.db import connection

    from tests.dbfaults import postgresql_outage

    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL (CI runs the suite on it too); SQLite faults are the lock tests above")
    gateway = gateway_factory(flush_interval=0.2)
    message = b"From: test@agentmail.dev\r\nSubject: across an outage\r\n\r\nbody\r\n"
    with gateway.smtp(timeout=30) as client:
        auth(client, "PLAIN", VALID_INBOX, VALID_KEY)
        with postgresql_outage():
            reply, _ = timed_auth(gateway)
            assert reply == "454 4.7.0 Temporary authentication failure"
            with pytest.raises(smtplib.SMTPDataError) as refused:
                client.sendmail(VALID_EMAIL, ["a@example.com"], message)
            assert refused.value.smtp_code == 451
            assert not Message.objects.exists()
        # Back: the kept record is written by the periodic retry, unprompted...
        deadline = time.monotonic() + 10
        while not AuthAttempt.objects.filter(reason="TEMPORARY_FAILURE").exists():
            assert time.monotonic() < deadline, "the kept AuthAttempt was not written after recovery"
            time.sleep(0.1)
        # ...and the same session, and new ones, work again.
        assert client.sendmail(VALID_EMAIL, ["a@example.com"], message) == {}
    assert timed_auth(gateway)[0] == "235 2.7.0 Authentication successful"
    gateway.settle()
    assert Message.objects.get().subject == "across an outage"
    assert list(AuthAttempt.objects.order_by("created_at").values_list("reason", flat=True)) == [
        "OK",
        "TEMPORARY_FAILURE",
        "OK",
    ]


REFUSED_USERNAME = "refused-by-trigger"


def test_a_record_the_database_refuses_is_logged_and_holds_up_nothing(
    gateway: LiveGateway, caplog: pytest.LogCaptureFixture
) -> None:
    """A row the database refuses on its data (here a trigger; in life a value a
    column cannot hold) is not retried forever: it would fail every later batch,
    messages included. It is logged in full and dropped; everyone else's records
    and messages are written, in the same batch and after it."""

    def session(refused: bool) -> tuple[str, dict[str, Any]]:
        with gateway.smtp(timeout=30) as client:
            if refused:
                return auth(client, "PLAIN", REFUSED_USERNAME, VALID_KEY)[1], {}
            reply = auth(client, "PLAIN", VALID_INBOX, VALID_KEY)[1]
            return reply, client.sendmail(
                VALID_EMAIL,
                ["a@example.com"],
                b"From: test@agentmail.dev\r\nSubject: beside a refused row\r\n\r\nbody\r\n",
            )

    with refused_attempts(REFUSED_USERNAME):
        # Alone first (a batch of one), then mixed into busy batches.
        assert session(refused=True)[0] == "535 5.7.8 Authentication credentials invalid"
        gateway.settle()
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(session, [n % 8 == 0 for n in range(40)]))  # 6 failures: under the rate limit
        gateway.settle()
    assert results.count(("535 5.7.8 Authentication credentials invalid", {})) == 5
    assert results.count(("235 2.7.0 Authentication successful", {})) == 35  # every message accepted
    assert Message.objects.count() == 35
    assert AuthAttempt.objects.filter(reason="OK").count() == 35
    assert not AuthAttempt.objects.filter(username=REFUSED_USERNAME).exists()
    refused = [
        r.getMessage()
        for r in caplog.get_records("call")
        if r.levelno == logging.ERROR and REFUSED_USERNAME in r.getMessage()
    ]
    assert len(refused) == 6 and all(
        line.startswith("AuthAttempt refused by the database, dropped:") for line in refused
    )
    assert len(recorder) == 0
    # Nothing of it lingers: the next attempt is written at once.
    assert timed_auth(gateway)[0] == "235 2.7.0 Authentication successful"
    gateway.settle()
    assert AuthAttempt.objects.filter(reason="OK").count() == 36


def test_the_first_auth_after_an_outage_nobody_saw_succeeds(gateway_factory: Any, scenarios: None) -> None:
    """The checker's connection dies with the outage; its next read reconnects
    at once instead of answering that AUTH 454."""
    from django.db import connection

    from tests.dbfaults import postgresql_outage

    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL (CI runs the suite on it too): a connection that dies while idle")
    gateway = gateway_factory()
    assert timed_auth(gateway)[0] == "235 2.7.0 Authentication successful"  # the checker has its connection
    with postgresql_outage():
        pass  # every gateway connection terminated, and no AUTH meanwhile
    assert timed_auth(gateway)[0] == "235 2.7.0 Authentication successful"
    gateway.settle()
    assert not AuthAttempt.objects.filter(reason="TEMPORARY_FAILURE").exists()
