"""Management commands as a user runs them: runsmtp as a real process, createapikey,
loading the demo fixture."""

from __future__ import annotations

import io
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from apikeys.models import ApiKey
from inboxes.models import Inbox, Organization
from smtpgateway.models import AuthAttempt
from smtpgateway.runtime.server import CannotListen
from tests.helpers import (
    UNKNOWN_KEY,
    VALID_INBOX,
    LiveGateway,
    Wire,
    auth,
    b64,
    database_url,
    eventually,
    free_port,
)
from tests.runsmtp import NO_TLS, ROOT, RunSmtp


def test_runsmtp_banner_and_clean_stop_on_sigterm(runsmtp: RunSmtp) -> None:
    banner = "\n".join(runsmtp.banner)
    assert f"agentmail-smtp listening on 127.0.0.1:{runsmtp.port}" in banner
    assert (
        "AUTH:      PLAIN LOGIN XOAUTH2 OAUTHBEARER, plaintext allowed (SMTP_AUTH_REQUIRE_TLS is off: demo only)"
        in banner
    )
    assert "TLS:" in banner and "database:" in banner
    with socket.create_connection(("127.0.0.1", runsmtp.port), timeout=5) as sock:
        assert sock.recv(100).startswith(b"220 ")
    code, out, err = runsmtp.stop(signal.SIGTERM)
    assert code == 0 and "agentmail-smtp stopped." in out
    assert "Traceback" not in err


def test_runsmtp_stops_on_sigint(runsmtp: RunSmtp) -> None:
    code, out, _ = runsmtp.stop(signal.SIGINT)
    assert code == 0 and "stopped" in out


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks is not installed (.ci/run installs it)")
@pytest.mark.parametrize(("mechanism", "form"), [("PLAIN", "id"), ("LOGIN", "id"), ("PLAIN", "address")])
def test_scenario_script_with_swaks(runsmtp: RunSmtp, mechanism: str, form: str) -> None:
    result = subprocess.run(
        [str(ROOT / "tests" / "test-scenarios.sh"), "all"],
        env={**os.environ, "SMTP_PORT": str(runsmtp.port), "AUTH_MECH": mechanism, "USERNAME_FORM": form},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(" PASS ") == 11 and "11 passed, 0 failed" in result.stdout
    eventually(lambda: AuthAttempt.objects.count() == 11)
    if form == "address":
        assert AuthAttempt.objects.filter(username="test@agentmail.dev", reason="OK", inbox__isnull=False).exists()
    # The seed demo's success command, end to end: 235 then 250 queued.
    sent = subprocess.run(
        [
            "swaks",
            "--server",
            f"127.0.0.1:{runsmtp.port}",
            "--auth",
            mechanism,
            "--auth-user",
            VALID_INBOX,
            "--auth-password",
            "am_validkey12345678901234567890123456",
            "--from",
            "test@agentmail.dev",
            "--to",
            "test@example.com",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sent.returncode == 0
    assert "<-  235 2.7.0 Authentication successful" in sent.stdout
    assert "<-  250 2.0.0 Ok: queued as " in sent.stdout


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks is not installed (.ci/run installs it)")
def test_demo_never_locks_itself_out(runsmtp: RunSmtp) -> None:
    """Loopback is exempt in the demo: the script can run again and again."""
    assert "loopback exempt" in "\n".join(runsmtp.banner)
    for _ in range(3):
        result = subprocess.run(
            [str(ROOT / "tests" / "test-scenarios.sh"), "all"],
            env={**os.environ, "SMTP_PORT": str(runsmtp.port)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert "11 passed, 0 failed" in result.stdout, result.stdout
    assert AuthAttempt.objects.filter(reason="RATE_LIMITED").count() == 0


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks is not installed (.ci/run installs it)")
def test_production_defaults_throttle_loopback(scenarios: None, leak_guard: None) -> None:
    server = RunSmtp(env={"SMTP_THROTTLE_EXEMPT": "", "SMTP_AUTH_FAILURE_DELAY": "0"})
    try:
        assert "loopback exempt" not in "\n".join(server.banner)
        runs = [
            subprocess.run(
                [str(ROOT / "tests" / "test-scenarios.sh"), "all"],
                env={**os.environ, "SMTP_PORT": str(server.port)},
                capture_output=True,
                text=True,
                timeout=120,
            )
            for _ in range(2)
        ]
    finally:
        server.stop()
    assert "11 passed, 0 failed" in runs[0].stdout  # 10 failures: the 10th still checked
    assert "454 4.7.0 Temporary authentication failure" in runs[1].stdout
    assert AuthAttempt.objects.filter(reason="RATE_LIMITED").exists()


def test_a_stalled_log_reader_does_not_stall_the_gateway(scenarios: None, leak_guard: None) -> None:
    """Every failed AUTH logs a WARNING line. With stderr a pipe nobody reads, the
    pipe is full after a few hundred lines; every session after that must still
    be served, and once the pipe is read every line is there (test_logwriter.py
    covers a reader so slow that lines are dropped)."""
    server = RunSmtp(unread_stderr=True, env={"SMTP_AUTH_FAILURE_DELAY": "0"})
    bad = "AUTH PLAIN " + b64(f"\0{VALID_INBOX}\0{UNKNOWN_KEY}")
    sessions = 1500  # ~150 KB of log lines: more than twice a 64 KiB pipe
    try:
        for n in range(sessions):
            wire = Wire(server.port, timeout=5)
            assert wire.command("EHLO stalled-logs.example").startswith("250 "), n
            assert wire.command(bad) == "535 5.7.8 Authentication credentials invalid", n
            wire.close()
    finally:
        code, _, err = server.stop()
    assert code == 0
    assert err.count("Auth failed: API_KEY_NOT_FOUND, returning 535 5.7.8") == sessions
    assert UNKNOWN_KEY not in err


def test_runsmtp_port_in_use_is_one_clear_error(transactional_db: None) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "manage.py", "runsmtp", "--port", str(port)],
            cwd=ROOT,
            env={**os.environ, "DATABASE_URL": database_url(), "DEBUG": "true", **NO_TLS},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert f"CommandError: Cannot listen on 127.0.0.1:{port} (plaintext): that port is already in use." in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bind_error_names_the_listener_that_failed(transactional_db: None, certificate: tuple[Path, Path]) -> None:
    """The implicit-TLS port taken: the error names that port, not --port."""
    cert, key = certificate
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        tls_port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "manage.py", "runsmtp", "--port", str(port)],
            cwd=ROOT,
            env={**os.environ, "DATABASE_URL": database_url(), "DEBUG": "true", **NO_TLS}
            | {"SMTP_TLS_CERT_FILE": str(cert), "SMTP_TLS_KEY_FILE": str(key), "SMTP_TLS_PORT": str(tls_port)},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert (
        f"CommandError: Cannot listen on 127.0.0.1:{tls_port} (implicit TLS): that port is already in use."
        in result.stderr
    )
    assert "Traceback" not in result.stderr


def test_a_listener_that_cannot_open_leaves_nothing_half_started(
    transactional_db: None, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        live = LiveGateway(port=port, tls_port=taken.getsockname()[1], tls_cert_file=cert, tls_key_file=key)
        with pytest.raises(CannotListen, match="implicit TLS"):
            live.start()
        live.stop()
    with pytest.raises(ConnectionRefusedError):  # the submission listener was closed again
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    assert not [thread.name for thread in threading.enumerate() if thread.name.startswith("smtp-")]


def test_createapikey_prints_a_working_key_once(
    scenarios: None, gateway: LiveGateway, extra_secrets: list[str]
) -> None:
    out, err = io.StringIO(), io.StringIO()
    call_command(
        "createapikey",
        "--org",
        "org_abc",
        "--scope",
        "smtp:send",
        "--name",
        "cli",
        "--expires-in-days",
        "30",
        stdout=out,
        stderr=err,
    )
    plaintext = out.getvalue().strip()
    extra_secrets.append(plaintext)
    assert plaintext.startswith("amk_") and len(plaintext) == 46
    assert "only time" in err.getvalue() and plaintext not in err.getvalue()
    api_key = ApiKey.objects.get(name="cli")
    assert api_key.expires_at is not None and api_key.scopes == ["smtp:send"]
    with gateway.smtp() as client:
        assert auth(client, "PLAIN", VALID_INBOX, plaintext)[1] == "235 2.7.0 Authentication successful"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--org", "org_nope"], "No organization 'org_nope'."),
        (["--org", "org_abc", "--scope", "root"], "Unknown scopes: root."),
        (["--org", "org_abc", "--expires-in-days", "0"], "--expires-in-days must be a positive number of days."),
    ],
)
def test_createapikey_errors(scenarios: None, args: list[str], message: str) -> None:
    with pytest.raises(CommandError, match=message.replace(".", r"\.")):
        call_command("createapikey", *args, stdout=io.StringIO(), stderr=io.StringIO())


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("SMTP_AUTH_RATE_LIMIT", "ten", "SMTP_AUTH_RATE_LIMIT must look like 10/600 (failures/seconds), not 'ten'"),
        ("SMTP_IPV6_CLIENT_PREFIX", 16, "SMTP_IPV6_CLIENT_PREFIX must be between 32 and 128, not 16"),
    ],
)
def test_runsmtp_names_a_setting_out_of_range(settings: Any, setting: str, value: object, message: str) -> None:
    """A one-line CommandError, before anything listens (it was a traceback)."""
    setattr(settings, setting, value)
    with pytest.raises(CommandError, match=re.escape(message)):
        call_command("runsmtp", "--port", "0", stdout=io.StringIO())


def test_loading_the_fixture_twice_is_harmless(scenarios: None) -> None:
    counts = (Organization.objects.count(), Inbox.objects.count(), ApiKey.objects.count())
    call_command("loaddata", "scenarios", verbosity=0)
    assert (Organization.objects.count(), Inbox.objects.count(), ApiKey.objects.count()) == counts == (2, 4, 6)


def test_runsmtp_raises_a_low_soft_limit_on_open_files(scenarios: None) -> None:
    """Under a soft limit of 256 open files, 400 allowed sessions are all greeted
    (without the raise, accept() failed past ~240 and the rest waited in silence)."""
    sessions = 400
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < sessions + 64:
        pytest.skip(f"this machine's hard limit ({hard}) is below what the test needs")
    server = RunSmtp(
        env={"SMTP_MAX_CONNECTIONS": str(sessions), "SMTP_MAX_CONNECTIONS_PER_IP": "0"}, open_files=(256, sessions + 64)
    )
    clients: list[socket.socket] = []

    def greeting(client: socket.socket) -> bytes:
        try:
            return client.recv(200)
        except TimeoutError:  # still in the kernel's queue, never accepted
            return b""

    try:
        clients = [socket.create_connection(("127.0.0.1", server.port), timeout=3) for _ in range(sessions)]
        assert sum(greeting(client).startswith(b"220 ") for client in clients) == sessions
        assert f"{sessions} connections (0 per address), {sessions + 64} open files" in "\n".join(server.banner)
    finally:
        for client in clients:
            client.close()
        assert server.stop()[0] == 0


def test_runsmtp_warns_when_the_hard_limit_on_open_files_is_too_low(scenarios: None) -> None:
    server = RunSmtp(env={"SMTP_MAX_CONNECTIONS": "1000"}, open_files=(200, 200))
    try:
        banner = "\n".join(server.banner)
        assert "1000 connections (20 per address), 200 open files" in banner
        assert (
            "WARNING:   open files are limited to 200 (hard limit), fewer than SMTP_MAX_CONNECTIONS (1000) + 64"
            in banner
        )
    finally:
        assert server.stop()[0] == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread names through /proc: Linux")
def test_runsmtp_threads_carry_their_names(scenarios: None) -> None:
    """`top -H`, `ps -L` and the benchmark's per-thread CPU see which thread is
    which: the checker, the committers and the log writer are named at the OS
    level, not only inside Python."""
    server = RunSmtp(env={"SMTP_DB_WORKERS": "2"})
    try:
        tasks = Path(f"/proc/{server.process.pid}/task")
        names = {(task / "comm").read_text().strip() for task in tasks.iterdir()}
        assert {"smtp-check", "smtp-commit-0", "smtp-commit-1", "log-writer"} <= names, names
    finally:
        assert server.stop()[0] == 0


@pytest.mark.django_db
def test_migrations_match_the_models() -> None:
    """A model change without its migration would reach a fresh database (and CI's)
    only as the old schema."""
    out = io.StringIO()
    call_command("makemigrations", "--check", "--dry-run", stdout=out)  # exits non-zero on a missing migration
    assert "No changes detected" in out.getvalue()
