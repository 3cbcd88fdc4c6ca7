"""Reads compiled once per shape return what the ORM's queryset returns, on the
real database; a read whose stated parameters drift from the ORM's fails loudly."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from smtpgateway.auth.reads import (
    _NEWEST_FAILURES_POSTGRESQL,
    _RECENT_FAILURES,
    _failures_queryset,
    _padded,
    recent_failures,
)
from smtpgateway.models import AuthAttempt
from smtpgateway.reasons import Reason
from smtpgateway.storage.compiled import CompiledRead

ADDRESSES = ["192.0.2.1", "192.0.2.2", "2001:db8::7", "198.51.100.9"]


def attempt(address: str, session_id: str, created_at: datetime, reason: Reason) -> AuthAttempt:
    return AuthAttempt(
        created_at=created_at,
        remote_addr=address,
        client_network=address,
        session_id=session_id,
        mechanism="PLAIN",
        username="inb_x",
        success=reason is Reason.OK,
        reason=reason.value,
        credential_failure=reason is Reason.API_KEY_NOT_FOUND,
    )


def orm_answer(addresses: list[str], since: datetime) -> dict[str, set[tuple[str, datetime]]]:
    found: dict[str, set[tuple[str, datetime]]] = {}
    rows = AuthAttempt.objects.filter(credential_failure=True, created_at__gte=since, client_network__in=addresses)
    for address, session_id, created_at in rows.values_list("client_network", "session_id", "created_at"):
        assert address is not None
        found.setdefault(address, set()).add((session_id, created_at))
    return found


@pytest.mark.django_db
def test_recent_failures_match_the_orm_for_every_shape() -> None:
    now = timezone.now().replace(microsecond=123456)
    rows = []
    for number, address in enumerate(ADDRESSES):
        for age in (1, 30, 700):  # seconds; the last is outside a ten-minute window
            rows.append(attempt(address, f"s{number}-{age}", now - timedelta(seconds=age), Reason.API_KEY_NOT_FOUND))
        rows.append(attempt(address, f"s{number}-ok", now, Reason.OK))  # not a counted failure
    AuthAttempt.objects.bulk_create(rows)
    since = now - timedelta(minutes=10)
    for count in range(1, len(ADDRESSES) + 1):
        asked = ADDRESSES[:count]
        expected = orm_answer(asked, since)
        assert sum(len(found) for found in expected.values()) == 2 * count
        assert recent_failures(set(asked), since, 10) == expected
        assert recent_failures(set(asked), since, 10) == expected  # compiled this time
    assert recent_failures(set(ADDRESSES[:2]), now + timedelta(seconds=1), 10) == {}
    assert recent_failures(set(), since, 10) == {}


@pytest.mark.django_db
def test_stated_parameters_that_differ_from_the_orm_are_refused() -> None:
    def built(since: datetime) -> Any:
        return AuthAttempt.objects.filter(created_at__gte=since).values_list("session_id")

    def wrong(since: datetime, connection: Any) -> list[Any]:
        return [since, since]  # one parameter too many

    read: CompiledRead[datetime] = CompiledRead(AuthAttempt, built, wrong, shape=lambda since: None)
    with pytest.raises(AssertionError, match="stated parameters differ"):
        list(read.rows(timezone.now()))


@pytest.mark.django_db
def test_address_lists_come_in_few_lengths() -> None:
    """On SQLite, batches of 1 to 40 addresses are read with IN lists of seven
    lengths (1, 2, 4 ... 64), not forty: each length is compiled once, and a new
    one costs the checker ~0.8 ms the first time it turns up. The padded reads
    still find exactly the asked addresses' failures. (PostgreSQL's read is one
    SQL text for any number of addresses, passed as an array.)"""
    now = timezone.now()
    asked_all = [f"198.51.100.{number}" for number in range(1, 41)]
    AuthAttempt.objects.bulk_create(
        attempt(address, f"s{number}", now, Reason.API_KEY_NOT_FOUND) for number, address in enumerate(asked_all)
    )
    _RECENT_FAILURES._local.__dict__.pop("compiled", None)  # this thread's, as if new
    for count in range(1, len(asked_all) + 1):
        found = recent_failures(set(asked_all[:count]), now - timedelta(seconds=1), 10)
        assert sorted(found) == sorted(asked_all[:count])
    compiled = _RECENT_FAILURES._local.__dict__.get("compiled", {})
    if connection.vendor == "postgresql":
        assert compiled == {}
    else:
        assert sorted(size for _, size in compiled) == [1, 2, 4, 8, 16, 32, 64]


@pytest.mark.django_db
def test_enough_failures_are_read_to_compare_with_the_limit() -> None:
    """Asked for enough to compare with a limit of 3, an address with five failures
    in the window gets at least its newest three (PostgreSQL reads those three,
    SQLite all five), and none from outside the window or of another address."""
    now = timezone.now()
    rows = [
        attempt("192.0.2.1", f"s{age}", now - timedelta(seconds=age), Reason.API_KEY_NOT_FOUND) for age in range(1, 6)
    ]
    rows += [attempt("192.0.2.1", "old", now - timedelta(seconds=900), Reason.API_KEY_NOT_FOUND)]
    rows += [attempt("192.0.2.2", "other", now, Reason.API_KEY_NOT_FOUND)]
    AuthAttempt.objects.bulk_create(rows)
    since = now - timedelta(minutes=10)
    found = recent_failures({"192.0.2.1"}, since, 3)
    assert set(found) == {"192.0.2.1"}
    newest_three = {(f"s{age}", now - timedelta(seconds=age)) for age in (1, 2, 3)}
    assert newest_three <= found["192.0.2.1"] <= orm_answer(["192.0.2.1"], since)["192.0.2.1"]


@pytest.mark.django_db
def test_the_rate_limit_read_uses_the_partial_index_when_statistics_mislead() -> None:
    """Statistics taken over an older history (as a TRUNCATE leaves them, or as a
    burst of attempts outruns autoanalyze) make PostgreSQL's planner guess that the
    window holds a row or two. A read filtered by "created_at >= since" then scans
    the created_at index over every attempt in the window; the rate-limit read
    still takes each address's newest failures from the partial index. SQLite
    (built without STAT4, as Debian's is) plans it the same way after ANALYZE."""
    now = timezone.now()
    table = AuthAttempt._meta.db_table
    AuthAttempt.objects.bulk_create(
        attempt(
            f"192.0.2.{number % 250 + 1}",
            f"old{number}",
            now - timedelta(hours=2, seconds=number),
            Reason.API_KEY_NOT_FOUND,
        )
        for number in range(2000)
    )
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {table}")
    AuthAttempt.objects.all().delete()  # the statistics stay
    AuthAttempt.objects.bulk_create(
        attempt(
            f"10.{number >> 16 & 255}.{number >> 8 & 255}.{number & 255}",
            f"new{number}",
            now - timedelta(microseconds=number),
            Reason.API_KEY_NOT_FOUND,
        )
        for number in range(30_000)
    )
    asked = [f"198.51.100.{number}" for number in range(1, 65)]
    since = now - timedelta(minutes=10)
    if connection.vendor == "postgresql":
        orm_plan = AuthAttempt.objects.filter(
            credential_failure=True, created_at__gte=since, client_network__in=asked
        ).explain()
        assert "authattempt_counted_failures" not in orm_plan, "the statistics did not mislead: the test proves nothing"
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN " + _NEWEST_FAILURES_POSTGRESQL, [asked, 10, since])
            plan = "\n".join(line for (line,) in cursor.fetchall())
        indexes_used = set(re.findall(r"Index(?: Only)? Scan(?: Backward)? (?:using|on) (\w+)", plan))
        assert indexes_used == {"authattempt_counted_failures"} and "Seq Scan" not in plan, plan
    else:
        plan = _failures_queryset((_padded(set(asked)), since)).explain()
        assert "USING INDEX authattempt_counted_failures (client_network=? AND created_at>?)" in plan, plan
    assert recent_failures(set(asked), since, 10) == {}
