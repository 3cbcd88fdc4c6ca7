"""``LOG_FORMAT=json`` from real processes: runsmtp after a successful AUTH, a
message and a failed AUTH, and deliver after delivering the message; every line
of their stderr parsed as JSON, its fields checked, no secret in any of them."""

from __future__ import annotations

import json
import os
import re
import smtplib
import subprocess
import sys
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from tests.helpers import (
    DEMO_KEYS,
    UNKNOWN_KEY,
    VALID_EMAIL,
    VALID_INBOX,
    VALID_KEY,
    auth,
    database_url,
    secret_markers,
)
from tests.runsmtp import ROOT, RunSmtp

TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def json_lines(stderr: str) -> list[dict[str, Any]]:
    """Every line parsed; each an object with the four fields every record has."""
    assert not [marker for marker in secret_markers(DEMO_KEYS) if marker in stderr], "a secret in the log"
    entries = [json.loads(line) for line in stderr.splitlines()]
    for entry in entries:
        assert {"time", "level", "logger", "event"} <= set(entry), entry
        assert TIME.fullmatch(entry["time"]) and entry["level"] in ("DEBUG", "INFO", "WARNING", "ERROR"), entry
    return entries


def the(entries: list[dict[str, Any]], event: str) -> dict[str, Any]:
    (found,) = [entry for entry in entries if entry["event"].startswith(event)]
    return found


def test_runsmtp_and_deliver_write_json_lines(scenarios: None, leak_guard: None, tmp_path: Path) -> None:
    server = RunSmtp(env={"LOG_FORMAT": "json"})
    try:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
            client.login(VALID_INBOX, VALID_KEY)
            message = EmailMessage()
            message["From"], message["To"], message["Subject"] = VALID_EMAIL, "someone@example.com", "JSON logs"
            message.set_content("Hello.")
            client.mail(VALID_EMAIL)
            client.rcpt("someone@example.com")
            code, reply = client.data(message.as_bytes())
            assert code == 250
            queue_id = reply.decode().rsplit(" ", 1)[-1]
        with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
            client.ehlo("failing.example")
            assert auth(client, "PLAIN", VALID_INBOX, UNKNOWN_KEY)[0] == 535
    finally:
        code, out, err = server.stop()
    assert code == 0 and "agentmail-smtp stopped." in out  # the banner stays text, on stdout
    entries = json_lines(err)

    succeeded = the(entries, f"Auth succeeded: inbox {VALID_INBOX} (session ")
    session = succeeded["session_id"]
    assert re.fullmatch(r"[0-9a-f]{12}", session) and f"(session {session})" in succeeded["event"]
    assert succeeded | {"time": None} == {
        "time": None,
        "level": "INFO",
        "logger": "smtpgateway.server",
        "event": f"Auth succeeded: inbox {VALID_INBOX} (session {session})",
        "session_id": session,
        "client_address": "127.0.0.1",
        "inbox_id": VALID_INBOX,
        "reason": "OK",
    }
    queued = the(entries, f"Queued {queue_id} from {VALID_INBOX}")
    assert (queued["session_id"], queued["queue_id"], queued["inbox_id"]) == (session, queue_id, VALID_INBOX)
    assert queued["client_address"] == "127.0.0.1"
    failed = the(entries, "Auth failed: API_KEY_NOT_FOUND, returning 535 5.7.8")
    assert failed["level"] == "WARNING" and failed["reason"] == "API_KEY_NOT_FOUND"
    assert failed["session_id"] != session and failed["client_address"] == "127.0.0.1"
    assert "inbox_id" not in failed

    delivery = subprocess.run(
        [sys.executable, "manage.py", "deliver", "--once"],
        cwd=ROOT,
        env={
            **os.environ,
            "LOG_FORMAT": "json",
            "DATABASE_URL": database_url(),
            "DELIVERY_RELAY_URL": f"file://{tmp_path / 'outbox'}",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert delivery.returncode == 0, delivery.stderr
    delivered = the(json_lines(delivery.stderr), f"Delivered {queue_id} to <someone@example.com>")
    assert delivered["logger"] == "delivery.worker"
    assert (delivered["queue_id"], delivered["recipient"], delivered["status"]) == (
        queue_id,
        "someone@example.com",
        "delivered",
    )


def test_json_logs_keep_the_log_writer_and_a_bad_format_is_refused() -> None:
    show = (
        "import logging; handler = logging.getLogger().handlers[0];"
        "print(type(handler).__name__, type(handler.formatter).__name__)"
    )
    shell = [sys.executable, "manage.py", "shell", "--no-imports", "-c", show]
    for log_format, formatter in (("json", "JsonFormatter"), ("human", "Formatter")):
        result = subprocess.run(
            shell, cwd=ROOT, env={**os.environ, "LOG_FORMAT": log_format}, capture_output=True, text=True, timeout=60
        )
        assert result.stdout.split() == ["BackgroundStreamHandler", formatter], result.stderr
    refused = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env={**os.environ, "LOG_FORMAT": "xml"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0 and "LOG_FORMAT must be human or json, not 'xml'." in refused.stderr
