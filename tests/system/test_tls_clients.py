"""TLS with real clients against `runsmtp`: swaks, openssl s_client, and
certificate rotation on SIGHUP."""

from __future__ import annotations

import os
import shutil
import signal
import smtplib
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from inboxes.models import Message
from smtpgateway.models import AuthAttempt
from smtpgateway.tls import CertificateSummary, write_self_signed
from tests.helpers import (
    VALID_EMAIL,
    VALID_INBOX,
    VALID_KEY,
    b64,
    eventually,
    free_port,
    served_serial,
    starttls_serial,
)
from tests.runsmtp import RunSmtp


@pytest.fixture
def tls_runsmtp(scenarios: None, leak_guard: None, certificate: tuple[Path, Path]) -> Any:
    cert, key = certificate
    tls_port = free_port()
    server = RunSmtp(
        "--tls-port",
        str(tls_port),
        env={"SMTP_TLS_CERT_FILE": str(cert), "SMTP_TLS_KEY_FILE": str(key), "SMTP_AUTH_REQUIRE_TLS": "true"},
    )
    server.tls_port = tls_port  # type: ignore[attr-defined]
    yield server
    if server.process.poll() is None:
        server.stop()


def swaks(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["swaks", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks is not installed (.ci/run installs it)")
def test_swaks_starttls_and_implicit_tls(tls_runsmtp: RunSmtp) -> None:
    banner = "\n".join(tls_runsmtp.banner)
    assert "(implicit TLS)" in banner and "only over TLS" in banner and "SIGHUP reloads it" in banner
    credentials = ["--auth", "PLAIN", "--auth-user", VALID_INBOX, "--auth-password", VALID_KEY]
    mail = ["--from", VALID_EMAIL, "--to", "a@example.com"]
    starttls = swaks("--server", f"127.0.0.1:{tls_runsmtp.port}", "--tls", *credentials, *mail)
    assert starttls.returncode == 0, starttls.stdout[-500:]
    assert "=== TLS started with cipher TLSv1.3" in starttls.stdout
    assert "<~  235 2.7.0 Authentication successful" in starttls.stdout
    assert "<~  250 2.0.0 Ok: queued as " in starttls.stdout
    implicit = swaks("--server", f"127.0.0.1:{tls_runsmtp.tls_port}", "--tlsc", *credentials, *mail)  # type: ignore[attr-defined]
    assert implicit.returncode == 0, implicit.stdout[-500:]
    assert "<~  235 2.7.0 Authentication successful" in implicit.stdout
    plaintext = swaks(
        "--server",
        f"127.0.0.1:{tls_runsmtp.port}",
        "--auth",
        "PLAIN",
        "--auth-user",
        VALID_INBOX,
        "--auth-password",
        VALID_KEY,
        "--quit-after",
        "AUTH",
    )
    assert plaintext.returncode != 0  # AUTH is not offered without TLS
    assert Message.objects.count() == 2
    eventually(lambda: AuthAttempt.objects.count() == 2)
    assert list(AuthAttempt.objects.values_list("encrypted", flat=True)) == [True, True]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_openssl_s_client_starttls(tls_runsmtp: RunSmtp, certificate: tuple[Path, Path]) -> None:
    session = subprocess.run(
        [
            "openssl",
            "s_client",
            "-starttls",
            "smtp",
            "-connect",
            f"127.0.0.1:{tls_runsmtp.port}",
            "-CAfile",
            str(certificate[0]),
            "-verify_return_error",
            "-quiet",
        ],
        input="EHLO openssl.example\r\nAUTH PLAIN " + b64(f"\0{VALID_INBOX}\0{VALID_KEY}") + "\r\nQUIT\r\n",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "250-AUTH PLAIN LOGIN" in session.stdout
    assert "235 2.7.0 Authentication successful" in session.stdout
    assert "221 2.0.0 Bye" in session.stdout


def serial_or_none(port: int, cafile: Path) -> int | None:
    """The served serial, or None while the server still presents a certificate that
    ``cafile`` does not vouch for (the old one, before the reload)."""
    try:
        return served_serial(port, cafile)
    except ssl.SSLCertVerificationError:
        return None


def test_sighup_reloads_the_certificate_without_dropping_sessions(
    tls_runsmtp: RunSmtp, certificate: tuple[Path, Path], client_context: ssl.SSLContext
) -> None:
    cert, key = certificate
    port = tls_runsmtp.tls_port  # type: ignore[attr-defined]
    old = CertificateSummary.of_file(cert)
    assert served_serial(port, cert) == old.serial
    # A session established before the reload...
    open_session = smtplib.SMTP_SSL("127.0.0.1", port, context=client_context, timeout=10)
    open_session.ehlo("before.example")

    # gencert writes EC; a CA or an older certbot issues RSA.
    renewed = write_self_signed(cert, key, "mail.test", key_type="rsa")
    assert renewed.serial != old.serial
    os.kill(tls_runsmtp.process.pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    while serial_or_none(port, cert) != renewed.serial:  # until the signal has been handled
        assert time.monotonic() < deadline, "the new certificate was not served after SIGHUP"
        time.sleep(0.1)

    assert starttls_serial(tls_runsmtp.port, cert) == renewed.serial
    # ...is still there and still works, and new sessions get the new certificate.
    assert open_session.login(VALID_INBOX, VALID_KEY)[0] == 235
    open_session.quit()
    assert tls_runsmtp.process.poll() is None

    # A broken file on the next SIGHUP keeps the renewed certificate in service.
    renewed_pem = shutil.copy(cert, cert.with_name("renewed.pem"))
    cert.write_text("not a certificate")
    os.kill(tls_runsmtp.process.pid, signal.SIGHUP)
    time.sleep(0.5)
    assert served_serial(port, Path(renewed_pem)) == renewed.serial
    code, _, err = tls_runsmtp.stop()
    assert code == 0
    assert "TLS certificate reloaded" in err and "TLS certificate not reloaded, still serving the previous one" in err
