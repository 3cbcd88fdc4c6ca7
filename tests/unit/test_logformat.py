"""``LOG_FORMAT=json`` (``smtpgateway/runtime/logformat.py``): one JSON object per
record, the named fields only. A real runsmtp writing it: tests/system/test_json_logs.py."""

from __future__ import annotations

import json
import logging
import re
import sys
from typing import Any

from smtpgateway.reasons import Reason
from smtpgateway.runtime.logformat import FIELDS, JsonFormatter

HUMAN = logging.Formatter("%(levelname)s %(name)s %(message)s")


def record(
    message: str, *args: object, extra: dict[str, object] | None = None, exc_info: Any = None
) -> logging.LogRecord:
    logger = logging.getLogger("smtpgateway.test")
    return logger.makeRecord(logger.name, logging.WARNING, __file__, 1, message, args, exc_info, extra=extra)


def test_the_fields_of_a_record() -> None:
    made = record(
        "Auth failed: %s, returning %s (session %s, %s)",
        Reason.API_KEY_NOT_FOUND,
        "535 5.7.8",
        "a1b2c3d4e5f6",
        "203.0.113.7",
        extra={"session_id": "a1b2c3d4e5f6", "client_address": "203.0.113.7", "reason": Reason.API_KEY_NOT_FOUND},
    )
    line = JsonFormatter().format(made)
    entry = json.loads(line)
    assert entry == {
        "time": entry["time"],
        "level": "WARNING",
        "logger": "smtpgateway.test",
        "event": "Auth failed: API_KEY_NOT_FOUND, returning 535 5.7.8 (session a1b2c3d4e5f6, 203.0.113.7)",
        "session_id": "a1b2c3d4e5f6",
        "client_address": "203.0.113.7",
        "reason": "API_KEY_NOT_FOUND",
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"])
    # The human format's text is the event, whatever extra= carries.
    assert HUMAN.format(made) == f"WARNING smtpgateway.test {entry['event']}"


def test_only_the_named_fields_are_written() -> None:
    """Whatever else a record carries (a library's extra=, an attribute set on
    it) never reaches the log."""
    made = record("Something happened", extra={"password": "am_secret", "api_key": "am_secret", "queue_id": "Q1"})
    made.auth_data = b"\0inb\0am_secret"
    line = JsonFormatter().format(made)
    assert "am_secret" not in line
    assert json.loads(line)["queue_id"] == "Q1"
    assert set(json.loads(line)) <= {"time", "level", "logger", "event", *FIELDS}


def test_one_ascii_line_with_the_traceback() -> None:
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        made = record("Unexpected error in an SMTP session\u2028from caf\u00e9", exc_info=sys.exc_info())
    line = JsonFormatter().format(made)
    assert line.isascii() and len(line.splitlines()) == 1  # str.splitlines splits at U+2028 too
    entry = json.loads(line)
    assert entry["event"] == "Unexpected error in an SMTP session\u2028from caf\u00e9"
    assert entry["exception"].startswith("Traceback (most recent call last):")
    assert entry["exception"].endswith("ValueError: bad\nvalue")
