"""``manage.py smtpcheck`` as a monitor runs it: a process against a real
``runsmtp``, judged by its exit status and its one line, never showing the key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from smtpgateway.models import AuthAttempt
from tests.helpers import DEMO_KEYS, REVOKED_KEY, VALID_INBOX, VALID_KEY, eventually, free_port, secret_markers
from tests.runsmtp import ROOT, RunSmtp

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3


def smtpcheck(*args: str, key: str | None = None, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run the command; its status and its one line (stdout), after checking that
    it printed nothing else and no secret."""
    environment = {name: value for name, value in os.environ.items() if name != "SMTPCHECK_KEY"}
    environment |= {"SMTPCHECK_KEY": key} if key else {}
    result = subprocess.run(
        [sys.executable, "manage.py", "smtpcheck", *args],
        cwd=ROOT,
        env=environment | (env or {}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr
    assert not [marker for marker in secret_markers(DEMO_KEYS) if marker in output], "a secret in smtpcheck's output"
    assert len(result.stdout.splitlines()) == 1 and result.stderr == "", output
    return result.returncode, result.stdout.strip()


@pytest.fixture
def plain_runsmtp(scenarios: None, leak_guard: None) -> Any:
    server = RunSmtp()
    yield server
    server.stop()


@pytest.fixture
def tls_runsmtp(scenarios: None, leak_guard: None, certificate: tuple[Path, Path]) -> Any:
    cert, key = certificate
    tls_port = free_port()
    server = RunSmtp(
        "--tls-port",
        str(tls_port),
        env={"SMTP_TLS_CERT_FILE": str(cert), "SMTP_TLS_KEY_FILE": str(key), "SMTP_AUTH_REQUIRE_TLS": "true"},
    )
    server.cafile = str(cert)  # type: ignore[attr-defined]
    server.tls_port = tls_port  # type: ignore[attr-defined]
    yield server
    server.stop()


def test_ok_over_plaintext_and_the_default_address(plain_runsmtp: RunSmtp) -> None:
    status, line = smtpcheck(f"127.0.0.1:{plain_runsmtp.port}")
    assert status == OK and line.startswith("SMTP OK - 250 in "), line
    assert f"(127.0.0.1:{plain_runsmtp.port}) | time=" in line
    # No HOST:PORT: SMTP_HOST and SMTP_PORT, a wildcard listen address read as loopback.
    status, line = smtpcheck(env={"SMTP_HOST": "0.0.0.0", "SMTP_PORT": str(plain_runsmtp.port)})
    assert status == OK and f"(127.0.0.1:{plain_runsmtp.port})" in line, line


def test_ok_with_starttls_and_with_implicit_tls(tls_runsmtp: Any) -> None:
    status, line = smtpcheck(f"127.0.0.1:{tls_runsmtp.port}", "--starttls", "--cafile", tls_runsmtp.cafile)
    assert status == OK and line.startswith("SMTP OK - 250 in "), line
    assert "TLSv1.3 (STARTTLS), certificate ends in 365 days" in line
    status, line = smtpcheck(f"127.0.0.1:{tls_runsmtp.tls_port}", "--tls", "--cafile", tls_runsmtp.cafile)
    assert status == OK and "TLSv1.3 (implicit TLS)" in line, line


def test_auth_ok_with_the_demo_key(tls_runsmtp: Any) -> None:
    address = f"127.0.0.1:{tls_runsmtp.port}"
    status, line = smtpcheck(
        address, "--starttls", "--cafile", tls_runsmtp.cafile, "--auth", VALID_INBOX, key=VALID_KEY
    )
    assert status == OK and line.startswith("SMTP OK - 235 in "), line
    eventually(lambda: AuthAttempt.objects.filter(success=True, username=VALID_INBOX).count() == 1)


def test_auth_refused_is_critical_after_one_attempt(tls_runsmtp: Any) -> None:
    address = f"127.0.0.1:{tls_runsmtp.port}"
    args = (address, "--starttls", "--cafile", tls_runsmtp.cafile, "--auth", VALID_INBOX)
    status, line = smtpcheck(*args, key=REVOKED_KEY)
    assert status == CRITICAL, line
    assert line.startswith("SMTP CRITICAL - AUTH refused: 535 5.7.8 Authentication credentials invalid in "), line
    eventually(lambda: AuthAttempt.objects.count() == 1)  # PLAIN only: no second try with LOGIN
    assert AuthAttempt.objects.get().reason == "API_KEY_REVOKED"


def test_auth_over_plaintext_where_it_needs_tls_is_critical(tls_runsmtp: Any) -> None:
    status, line = smtpcheck(f"127.0.0.1:{tls_runsmtp.port}", "--auth", VALID_INBOX, key=VALID_KEY)
    assert status == CRITICAL and "AUTH PLAIN not offered (over plaintext: add --starttls or --tls)" in line, line


def test_an_untrusted_certificate_is_critical(tls_runsmtp: Any) -> None:
    status, line = smtpcheck(f"127.0.0.1:{tls_runsmtp.port}", "--starttls")  # the system's CAs only
    assert status == CRITICAL and "STARTTLS: certificate not trusted (self-signed certificate)" in line, line
    status, line = smtpcheck(f"127.0.0.1:{tls_runsmtp.tls_port}", "--tls")
    assert status == CRITICAL and "implicit TLS: certificate not trusted" in line, line


def test_nothing_listening_is_critical() -> None:
    status, line = smtpcheck(f"127.0.0.1:{free_port()}")
    assert status == CRITICAL and line.startswith("SMTP CRITICAL - cannot connect: Connection refused in "), line


def test_a_check_that_cannot_run_as_asked_is_unknown() -> None:
    status, line = smtpcheck("127.0.0.1:2525", "--auth", VALID_INBOX)  # no SMTPCHECK_KEY
    assert (status, line) == (UNKNOWN, "SMTP UNKNOWN - --auth needs the API key in $SMTPCHECK_KEY")
    status, line = smtpcheck("127.0.0.1:notaport")
    assert status == UNKNOWN and "not a port" in line, line
    result = subprocess.run(
        [sys.executable, "manage.py", "smtpcheck", "--starttls", "--tls"], cwd=ROOT, capture_output=True, text=True
    )
    assert (
        result.returncode == UNKNOWN
        and "SMTP UNKNOWN - argument --tls: not allowed with argument --starttls" in result.stderr
    )
