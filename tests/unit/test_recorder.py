"""The AuthAttempt recorder's backlog, and the commit's ``last_used_at``, against
the real database."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from apikeys.models import ApiKey
from smtpgateway.auth.checker import PendingFailures
from smtpgateway.auth.rules import Peer
from smtpgateway.models import AuthAttempt
from smtpgateway.reasons import Reason
from smtpgateway.storage.commits import LAST_USED_RESOLUTION, LastUsedWrites, process
from smtpgateway.storage.jobs import AttemptRecord, RecordsJob
from smtpgateway.storage.records import AttemptRecorder, attempt_row

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def record(n: int) -> AttemptRecord:
    return AttemptRecord.build(
        peer=Peer(f"s{n}", "192.0.2.1", 1000 + n, "192.0.2.1"),
        when=T0 + timedelta(seconds=n),
        mechanism="PLAIN",
        username=b"inb_x",
        reason=Reason.TEMPORARY_FAILURE,
    )


def test_backlog_is_bounded_logged_and_written_later(transactional_db: None, caplog: pytest.LogCaptureFixture) -> None:
    recorder = AttemptRecorder(max_kept=2)
    for n in range(3):
        recorder.keep(record(n))
    assert len(recorder) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    kept_lines = [m.split(": ", 1)[1] for m in errors if m.startswith("AuthAttempt not written")]
    assert [json.loads(line)["session_id"] for line in kept_lines] == ["s0", "s1", "s2"]  # every record is in the log
    assert any("backlog full (2); dropped from memory" in m and '"s0"' in m for m in errors)

    drained = recorder.drain()
    assert [r.session_id for r in drained] == ["s1", "s2"] and len(recorder) == 0
    AuthAttempt.objects.bulk_create([attempt_row(r) for r in drained])
    rows = AuthAttempt.objects.order_by("created_at")
    assert [(r.session_id, r.created_at, r.reason) for r in rows] == [
        ("s1", T0 + timedelta(seconds=1), "TEMPORARY_FAILURE"),
        ("s2", T0 + timedelta(seconds=2), "TEMPORARY_FAILURE"),
    ]


def test_restore_puts_records_back_in_order_within_the_bound() -> None:
    recorder = AttemptRecorder(max_kept=3)
    recorder.keep(record(3))
    recorder.restore([record(1), record(2)])
    assert [r.session_id for r in recorder.drain()] == ["s1", "s2", "s3"]
    recorder.keep(record(4))
    recorder.restore([record(1), record(2), record(3)])  # one too many: the oldest goes
    assert [r.session_id for r in recorder.drain()] == ["s2", "s3", "s4"]


def success(key: ApiKey, when: datetime) -> RecordsJob:
    return RecordsJob(
        (
            AttemptRecord.build(
                peer=Peer("s", "192.0.2.1", 1, "192.0.2.1"),
                when=when,
                mechanism="PLAIN",
                username=b"inb_x",
                reason=Reason.OK,
                api_key_id=key.pk,
            ),
        )
    )


def test_last_used_at_written_by_another_process_is_left_alone(scenarios: None) -> None:
    """Each process remembers only its own writes; the UPDATE's condition keeps a
    second process (here: a second LastUsedWrites) from rewriting a fresh time."""
    key = ApiKey.objects.get(prefix="am_validke")
    process([success(key, T0)], PendingFailures(), LastUsedWrites())
    key.refresh_from_db()
    assert key.last_used_at == T0
    within = T0 + LAST_USED_RESOLUTION / 2
    process([success(key, within)], PendingFailures(), LastUsedWrites())
    key.refresh_from_db()
    assert key.last_used_at == T0
    later = T0 + LAST_USED_RESOLUTION
    process([success(key, later)], PendingFailures(), LastUsedWrites())
    key.refresh_from_db()
    assert key.last_used_at == later


def test_a_key_written_within_the_second_costs_no_statement(scenarios: None) -> None:
    key = ApiKey.objects.get(prefix="am_validke")
    writes = LastUsedWrites()
    process([success(key, T0)], PendingFailures(), writes)
    with CaptureQueriesContext(connection) as queries:
        process([success(key, T0 + LAST_USED_RESOLUTION / 2)], PendingFailures(), writes)
        process([success(key, T0 + LAST_USED_RESOLUTION)], PendingFailures(), writes)
    updates = [query["sql"] for query in queries if "apikeys_apikey" in query["sql"]]
    assert len(updates) == 1 and updates[0].startswith("UPDATE")
    key.refresh_from_db()
    assert key.last_used_at == T0 + LAST_USED_RESOLUTION
