"""The metrics port of a real ``runsmtp``: Prometheus text summed over ``--workers``,
a killed worker's files, and /healthz and /readyz normally, while a worker's event
loop is stopped, during a database outage and during a drain."""

from __future__ import annotations

import contextlib
import os
import signal
import smtplib
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from django.db import connection
from prometheus_client.multiprocess import MultiProcessCollector

from tests.dbfaults import postgresql_outage, write_lock
from tests.helpers import (
    UNKNOWN_KEY,
    VALID_EMAIL,
    VALID_INBOX,
    VALID_KEY,
    Samples,
    Wire,
    b64,
    eventually,
    free_port,
    http_get,
    sample,
    scrape,
)
from tests.runsmtp import ROOT, RunSmtp

GOOD = "AUTH PLAIN " + b64(f"\0{VALID_INBOX}\0{VALID_KEY}")
BAD = "AUTH PLAIN " + b64(f"\0{VALID_INBOX}\0{UNKNOWN_KEY}")
MESSAGE = f"From: {VALID_EMAIL}\r\nSubject: counted\r\n\r\n".encode() + b"a line of the body\r\n" * 100


def auth_session(port: int, command: str, expect: str) -> None:
    wire = Wire(port)
    wire.command("EHLO counted.example")
    assert wire.command(command).startswith(expect)
    assert wire.command("QUIT").startswith("221 ")
    wire.close()


def send_message(port: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.login(VALID_INBOX, VALID_KEY)
        client.sendmail(VALID_EMAIL, ["someone@example.com"], MESSAGE)


def auth_ok(samples: Samples) -> float:
    return sample(samples, "agentmail_smtp_auth_attempts_total", mechanism="PLAIN", outcome="success", reason="OK")


def children_of(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def metrics_dir_of(pid: int) -> Path:
    variables = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    found = [item.split(b"=", 1)[1] for item in variables if item.startswith(b"PROMETHEUS_MULTIPROC_DIR=")]
    assert found, "a worker runs without PROMETHEUS_MULTIPROC_DIR"
    return Path(found[0].decode())


def sessions_counted_by(directory: Path, pid: int) -> float:
    """What one worker's own counter file holds for agentmail_smtp_sessions_total."""
    for family in MultiProcessCollector.merge([str(directory / f"counter_{pid}.db")], accumulate=False):  # type: ignore[no-untyped-call]
        for counted in family.samples:
            if counted.name == "agentmail_smtp_sessions_total":
                return float(counted.value)
    raise AssertionError(f"worker {pid} counted no sessions")


@contextlib.contextmanager
def database_outage() -> Iterator[None]:
    """The database gone, as the gateway sees it: PostgreSQL refusing its
    connections; on SQLite, another connection holding the write lock."""
    with postgresql_outage() if connection.vendor == "postgresql" else write_lock():
        yield


def busy_data_session(port: int) -> Wire:
    """A session in the middle of a DATA: a stop waits for it."""
    wire = Wire(port)
    wire.command("EHLO busy.example")
    assert wire.command(GOOD).startswith("235 ")
    assert wire.command(f"MAIL FROM:<{VALID_EMAIL}>").startswith("250 ")
    assert wire.command("RCPT TO:<someone@example.com>").startswith("250 ")
    assert wire.command("DATA").startswith("354 ")
    wire.send(f"From: {VALID_EMAIL}\r\nSubject: in flight\r\n\r\nthe first line".encode())
    return wire


def test_two_workers_are_scraped_as_one_and_a_killed_worker_is_replaced(scenarios: None, leak_guard: None) -> None:
    metrics_port = free_port()
    server = RunSmtp("--workers", "2", "--metrics-port", str(metrics_port))
    try:
        assert f"metrics on http://127.0.0.1:{metrics_port}/metrics" in server.stdout()
        workers = children_of(server.process.pid)
        directory = metrics_dir_of(workers[0])
        eventually(lambda: http_get(metrics_port, "/readyz")[0] == 200)
        assert http_get(metrics_port, "/healthz")[0] == 200

        for _ in range(12):
            auth_session(server.port, GOOD, "235 ")
        for _ in range(4):
            auth_session(server.port, BAD, "535 ")
        send_message(server.port)  # one more successful AUTH, and a message
        # 17 greetings, EHLO replies and 221s, 13 235s, MAIL, RCPT, the 250 after DATA.
        replies_2xx = 17 * 3 + 13 + 3

        def counted() -> tuple[float, float]:
            samples = scrape(metrics_port)
            return auth_ok(samples), sample(samples, "agentmail_smtp_replies_total", code_class="2xx")

        # The last QUIT's 221 is counted within a heartbeat (0.25 s) of being sent.
        eventually(lambda: counted() == (13, replies_2xx))
        samples = scrape(metrics_port)
        failed = sample(
            samples,
            "agentmail_smtp_auth_attempts_total",
            mechanism="PLAIN",
            outcome="failure",
            reason="API_KEY_NOT_FOUND",
        )
        assert failed == 4
        assert sample(samples, "agentmail_smtp_sessions_total") == 17
        assert sample(samples, "agentmail_smtp_connections_total", listener="submission") == 17
        assert sample(samples, "agentmail_smtp_messages_accepted_total") == 1
        assert sample(samples, "agentmail_smtp_message_size_bytes_count") == 1
        assert sample(samples, "agentmail_smtp_message_size_bytes_sum") == len(MESSAGE)
        assert sample(samples, "agentmail_smtp_auth_duration_seconds_count", outcome="success") == 13
        assert sample(samples, "agentmail_smtp_auth_duration_seconds_count", outcome="failure") == 4
        assert sample(samples, "agentmail_smtp_replies_total", code_class="5xx") == 4
        assert sample(samples, "agentmail_smtp_sessions_active") == 0
        assert sample(samples, "agentmail_smtp_workers") == 2
        batches = sample(samples, "agentmail_smtp_database_batch_duration_seconds_count", thread="commit")
        assert batches >= 1
        # The sum is of both workers: each counted some of the sessions itself.
        per_worker = [sessions_counted_by(directory, pid) for pid in workers]
        assert sum(per_worker) == 17 and all(per_worker), per_worker

        # A worker killed outright: its counts stay in the sum, its live gauges go,
        # and another takes its place.
        killed = workers[0]
        os.kill(killed, signal.SIGKILL)
        eventually(lambda: sample(scrape(metrics_port), "agentmail_smtp_worker_replacements_total") == 1)
        assert not (directory / f"gauge_livesum_{killed}.db").exists()
        assert not (directory / f"gauge_livemin_{killed}.db").exists()
        assert (directory / f"counter_{killed}.db").exists()
        eventually(lambda: http_get(metrics_port, "/readyz")[0] == 200, timeout=30)
        replacement = (set(children_of(server.process.pid)) - set(workers)).pop()
        after = scrape(metrics_port)
        assert auth_ok(after) == 13 and sample(after, "agentmail_smtp_sessions_total") == 17
        assert sample(after, "agentmail_smtp_workers") == 2
        for _ in range(4):
            auth_session(server.port, GOOD, "235 ")
        eventually(lambda: auth_ok(scrape(metrics_port)) == 17)

        # A worker whose event loop does not run: /healthz says which.
        os.kill(replacement, signal.SIGSTOP)
        try:
            eventually(lambda: http_get(metrics_port, "/healthz")[0] == 503, timeout=5)
            assert f"worker {replacement}" in http_get(metrics_port, "/healthz")[1]
        finally:
            os.kill(replacement, signal.SIGCONT)
        eventually(lambda: http_get(metrics_port, "/healthz")[0] == 200, timeout=5)

        # A drain: not ready while a DATA in progress finishes; alive throughout.
        busy = [busy_data_session(server.port) for _ in range(2)]
        server.process.send_signal(signal.SIGTERM)
        eventually(lambda: http_get(metrics_port, "/readyz") == (503, "draining: the gateway is stopping\n"))
        assert http_get(metrics_port, "/healthz")[0] == 200
        for wire in busy:
            wire.send(b"\r\n.")
            assert wire.reply()[-1].startswith("250 ")
            wire.close()
    finally:
        code, out, err = server.stop()
    assert code == 0, err[-2000:]
    assert "worker 0 (pid" in err and "was killed by signal 9; starting another" in err
    assert not directory.exists(), "the supervisor left its metrics directory behind"
    assert VALID_KEY not in out + err


def test_readyz_follows_the_database_and_the_drain(scenarios: None, leak_guard: None) -> None:
    metrics_port = free_port()
    server = RunSmtp("--metrics-port", str(metrics_port), env={"DATABASE_TIMEOUT": "0.5"})
    try:
        assert f"metrics:   http://127.0.0.1:{metrics_port}/metrics" in server.stdout()
        assert http_get(metrics_port, "/readyz") == (200, "ready: listening, database reachable\n")
        status, said = http_get(metrics_port, "/healthz")
        assert status == 200 and said.startswith("ok: the event loop answered in ")
        assert http_get(metrics_port, "/nothing")[0] == 404

        with database_outage():
            status, said = http_get(metrics_port, "/readyz")
            assert status == 503 and said.startswith("database not reachable"), said
            assert said.count("\n") == 1
            # The event loop never waits on the database: still alive, and serving.
            assert http_get(metrics_port, "/healthz")[0] == 200
            wire = Wire(server.port)
            assert wire.command("EHLO during.example").startswith("250")
            wire.close()
        eventually(lambda: http_get(metrics_port, "/readyz")[0] == 200)

        busy = busy_data_session(server.port)
        server.process.send_signal(signal.SIGTERM)
        eventually(lambda: http_get(metrics_port, "/readyz") == (503, "draining: the gateway is stopping\n"))
        assert http_get(metrics_port, "/healthz")[0] == 200
        busy.send(b"\r\n.")
        assert busy.reply()[-1].startswith("250 ")
        busy.close()
    finally:
        code, out, err = server.stop()
    assert code == 0, err[-2000:]
    assert VALID_KEY not in out + err


def test_a_metrics_port_in_use_is_one_error_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "manage.py", "runsmtp", "--port", str(free_port()), "--metrics-port", str(port)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        == f"CommandError: Cannot listen on 127.0.0.1:{port} (metrics): that port is already in use."
    )
