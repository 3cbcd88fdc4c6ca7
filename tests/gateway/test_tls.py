"""TLS as a submission server does it, with real handshakes and real clients:
STARTTLS, implicit TLS, AUTH only over encryption, certificate reload on SIGHUP."""

from __future__ import annotations

import shutil
import smtplib
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest

from inboxes.models import Message
from smtpgateway.models import AuthAttempt
from smtpgateway.tls import write_self_signed
from tests.helpers import (
    SCENARIOS,
    VALID_EMAIL,
    VALID_INBOX,
    VALID_KEY,
    GatewayFactory,
    LiveGateway,
    Scenario,
    auth,
    b64,
    served_serial,
    starttls_serial,
)


@pytest.fixture
def tls_gateway(gateway_factory: GatewayFactory, scenarios: None, certificate: tuple[Path, Path]) -> LiveGateway:
    """Production policy: STARTTLS on the submission port, an implicit-TLS port,
    AUTH only over TLS."""
    cert, key = certificate
    return gateway_factory(tls_cert_file=cert, tls_key_file=key, tls_port=0, auth_require_tls=True)


def starttls_client(gateway: LiveGateway, context: ssl.SSLContext) -> smtplib.SMTP:
    client = gateway.smtp()
    client.starttls(context=context)
    client.ehlo("tester.example")
    return client


def implicit_client(gateway: LiveGateway, context: ssl.SSLContext) -> smtplib.SMTP_SSL:
    client = smtplib.SMTP_SSL("127.0.0.1", gateway.tls_port, context=context, timeout=10)
    client.ehlo("tester.example")
    return client


def test_plaintext_offers_starttls_and_not_auth(tls_gateway: LiveGateway) -> None:
    with tls_gateway.smtp() as client:
        assert client.has_extn("starttls") and not client.has_extn("auth")
        with pytest.raises(smtplib.SMTPNotSupportedError):
            client.login(VALID_INBOX, VALID_KEY)  # smtplib itself refuses: AUTH not offered
        # A client that tries anyway is refused, and the attempt is recorded.
        code, reply = auth(client, "PLAIN", VALID_INBOX, VALID_KEY)
    assert reply == "538 5.7.11 Encryption required for requested authentication mechanism"
    tls_gateway.settle()
    attempt = AuthAttempt.objects.get()
    assert (attempt.reason, attempt.success, attempt.encrypted) == ("ENCRYPTION_REQUIRED", False, False)


def test_starttls_then_login(tls_gateway: LiveGateway, client_context: ssl.SSLContext) -> None:
    with starttls_client(tls_gateway, client_context) as client:
        assert client.has_extn("auth") and not client.has_extn("starttls")
        assert client.login(VALID_INBOX, VALID_KEY) == (235, b"2.7.0 Authentication successful")
        client.sendmail(VALID_EMAIL, ["a@example.com"], b"From: test@agentmail.dev\r\nSubject: over TLS\r\n\r\nhi\r\n")
    tls_gateway.settle()
    attempt = AuthAttempt.objects.get()
    assert attempt.encrypted and attempt.tls_version == "TLSv1.3" and attempt.tls_cipher.startswith("TLS_")
    tls_gateway.settle()
    raw = bytes(Message.objects.get().raw)
    assert b" with ESMTPSA id " in raw
    assert f"(using TLSv1.3 with cipher {attempt.tls_cipher} (".encode() in raw


def test_starttls_failed_login_is_recorded(tls_gateway: LiveGateway, client_context: ssl.SSLContext) -> None:
    with starttls_client(tls_gateway, client_context) as client:
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            client.login(VALID_INBOX, "am_wrongorg45678901234567890123456789")
    assert refused.value.smtp_code == 535
    # smtplib's login() tries PLAIN, then LOGIN: two attempts, both recorded.
    tls_gateway.settle()
    attempts = AuthAttempt.objects.order_by("created_at").values_list("mechanism", "reason", "encrypted")
    assert list(attempts) == [("PLAIN", "ORGANIZATION_MISMATCH", True), ("LOGIN", "ORGANIZATION_MISMATCH", True)]


def test_session_id_survives_starttls(tls_gateway: LiveGateway, client_context: ssl.SSLContext) -> None:
    with starttls_client(tls_gateway, client_context) as client:
        client.login(VALID_INBOX, VALID_KEY)
    with tls_gateway.smtp() as client:
        auth(client, "PLAIN", VALID_INBOX, VALID_KEY)  # 538 on plaintext
    tls_gateway.settle()
    ids = list(AuthAttempt.objects.values_list("session_id", flat=True))
    assert len(set(ids)) == 2 and all(len(i) == 12 for i in ids)


def test_implicit_tls_offers_auth(tls_gateway: LiveGateway, client_context: ssl.SSLContext) -> None:
    """aiosmtpd withholds AUTH on implicit TLS (its issue 281); we do not."""
    with implicit_client(tls_gateway, client_context) as client:
        assert client.has_extn("auth") and not client.has_extn("starttls")
        assert client.login(VALID_INBOX, VALID_KEY)[0] == 235
    tls_gateway.settle()
    assert AuthAttempt.objects.get().encrypted


@pytest.mark.parametrize("transport", ["starttls", "implicit"])
@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[f"scenario{s.number}" for s in SCENARIOS])
def test_ten_scenarios_over_tls(
    tls_gateway: LiveGateway, client_context: ssl.SSLContext, scenario: Scenario, mechanism: str, transport: str
) -> None:
    connect = starttls_client if transport == "starttls" else implicit_client
    with connect(tls_gateway, client_context) as client:
        _, reply = auth(client, mechanism, scenario.username, scenario.password)
    assert reply == scenario.reply
    tls_gateway.settle()
    attempt = AuthAttempt.objects.get()
    assert (attempt.reason, attempt.encrypted) == (scenario.reason, True)


def test_second_starttls_and_starttls_on_implicit_tls(tls_gateway: LiveGateway, client_context: ssl.SSLContext) -> None:
    with starttls_client(tls_gateway, client_context) as client:
        assert client.docmd("STARTTLS") == (503, b"5.5.1 TLS already active")
        assert client.noop()[0] == 250
    with implicit_client(tls_gateway, client_context) as client:
        assert client.docmd("STARTTLS") == (503, b"5.5.1 TLS already active")


def test_commands_pipelined_after_starttls_are_discarded(
    tls_gateway: LiveGateway, client_context: ssl.SSLContext
) -> None:
    """RFC 3207 4.2 (Postfix's CVE-2011-0411, aiosmtpd's CVE-2024-34083): what
    follows STARTTLS in the same plaintext write, where a man in the middle could
    have put it, is thrown away, not run inside the encrypted session."""
    wire = tls_gateway.wire()
    wire.command("EHLO tester.example")
    credentials = b64(f"\0{VALID_INBOX}\0{VALID_KEY}")
    injected = f"EHLO injected\r\nAUTH PLAIN {credentials}\r\nNOOP injected"
    assert wire.command("STARTTLS\r\n" + injected) == "220 2.0.0 Ready to start TLS"
    assert wire.buffer == b""
    wire.sock = client_context.wrap_socket(wire.sock, server_hostname="127.0.0.1")
    # The first reply over TLS answers our own command, not an injected one.
    assert wire.command("NOOP") == "250 2.0.0 OK"
    assert wire.command("EHLO tester.example").startswith("250 ")
    assert wire.command(f"MAIL FROM:<{VALID_EMAIL}>") == "530 5.7.0 Authentication required"
    wire.close()
    tls_gateway.settle()
    assert not AuthAttempt.objects.exists()  # the injected AUTH never ran


def test_starttls_forgets_a_plaintext_authentication(
    gateway_factory: Any, scenarios: None, certificate: tuple[Path, Path], client_context: ssl.SSLContext
) -> None:
    """RFC 3207 4.2: after the handshake the client starts over, even if it had
    authenticated on plaintext (where the demo allows that)."""
    cert, key = certificate
    gateway = gateway_factory(tls_cert_file=cert, tls_key_file=key, auth_require_tls=False)
    with gateway.smtp() as client:
        assert client.login(VALID_INBOX, VALID_KEY)[0] == 235
        client.starttls(context=client_context)
        client.ehlo("tester.example")
        assert client.mail(VALID_EMAIL) == (530, b"5.7.0 Authentication required")
        assert client.login(VALID_INBOX, VALID_KEY)[0] == 235
        assert client.mail(VALID_EMAIL)[0] == 250


def test_starttls_without_certificate(gateway: LiveGateway) -> None:
    wire = gateway.wire()
    wire.command("EHLO tester.example")
    assert wire.command("STARTTLS") == "454 4.7.0 TLS not available"
    assert wire.command("STARTTLS now") == "501 5.5.4 Syntax: STARTTLS"
    assert wire.command("NOOP") == "250 2.0.0 OK"


def read_until_closed(sock: socket.socket) -> bytes:
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def assert_still_serving(gateway: LiveGateway, context: ssl.SSLContext) -> None:
    with starttls_client(gateway, context) as client:
        assert client.login(VALID_INBOX, VALID_KEY)[0] == 235


def test_garbage_instead_of_a_handshake_costs_only_that_connection(
    tls_gateway: LiveGateway, client_context: ssl.SSLContext, caplog: pytest.LogCaptureFixture
) -> None:
    # After STARTTLS:
    wire = tls_gateway.wire()
    wire.command("EHLO tester.example")
    assert wire.command("STARTTLS") == "220 2.0.0 Ready to start TLS"
    wire.sock.sendall(b"\x00\xffGET / HTTP/1.1\r\n\r\n" * 50)
    assert wire.closed_by_server()
    # On the implicit-TLS port (the server may send a TLS alert, never SMTP):
    with socket.create_connection(("127.0.0.1", tls_gateway.tls_port), timeout=10) as raw:
        raw.sendall(b"EHLO not-tls\r\n" * 10)
        received = read_until_closed(raw)
        assert not received.startswith(b"220") and not received.startswith(b"250")
    # Dropping in the middle of a handshake:
    with socket.create_connection(("127.0.0.1", tls_gateway.tls_port), timeout=10) as raw:
        raw.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # the start of a ClientHello
    assert_still_serving(tls_gateway, client_context)
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


def test_minimum_tls_version(
    gateway_factory: Any, scenarios: None, certificate: tuple[Path, Path], client_context: ssl.SSLContext
) -> None:
    cert, key = certificate
    gateway = gateway_factory(tls_cert_file=cert, tls_key_file=key, tls_port=0, tls_min_version="1.3")
    client_context.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        implicit_client(gateway, client_context)
    client_context.maximum_version = ssl.TLSVersion.MAXIMUM_SUPPORTED
    with implicit_client(gateway, client_context) as client:
        assert client.noop()[0] == 250


def test_admin_filters_on_encryption(tls_gateway: LiveGateway, client_context: ssl.SSLContext, admin_client) -> None:  # type: ignore[no-untyped-def]
    with starttls_client(tls_gateway, client_context) as client:
        client.login(VALID_INBOX, VALID_KEY)
    with tls_gateway.smtp() as client:
        auth(client, "PLAIN", VALID_INBOX, VALID_KEY)
    tls_gateway.settle()
    page = admin_client.get("/admin/smtpgateway/authattempt/", {"encrypted__exact": "1"})
    assert [a.reason for a in page.context["cl"].result_list] == ["OK"]


@pytest.mark.parametrize("before, after", [("ec", "rsa"), ("rsa", "ec"), ("ec", "ec"), ("rsa", "rsa")])
def test_reload_serves_exactly_the_new_certificate_whatever_its_key_type(
    gateway_factory: Any, scenarios: None, tmp_path: Path, before: str, after: str
) -> None:
    """An OpenSSL context holds one certificate per key type: loaded into the live
    context, an RSA pair was added beside the EC one, and clients that accept
    ECDSA kept getting the old certificate. Every new session must get exactly the
    certificate now in the files, on both listeners; an open session keeps its own."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    old = write_self_signed(cert, key, "mail.test", key_type=before)
    old_pem = shutil.copy(cert, tmp_path / "old.pem")
    gateway = gateway_factory(tls_cert_file=cert, tls_key_file=key, tls_port=0)
    assert served_serial(gateway.tls_port, cert) == starttls_serial(gateway.port, cert) == old.serial
    open_session = smtplib.SMTP_SSL(
        "127.0.0.1", gateway.tls_port, context=ssl.create_default_context(cafile=old_pem), timeout=10
    )
    open_session.ehlo("before.example")

    renewed = write_self_signed(cert, key, "mail.test", key_type=after)
    assert gateway.server.certificates is not None and gateway.server.certificates.reload()
    for _ in range(3):  # every new session, not only the first
        assert served_serial(gateway.tls_port, cert) == renewed.serial
        assert starttls_serial(gateway.port, cert) == renewed.serial
    assert open_session.login(VALID_INBOX, VALID_KEY)[0] == 235
    open_session.quit()

    # A pair that does not load (a certificate without its key) changes nothing.
    renewed_pem = shutil.copy(cert, tmp_path / "renewed.pem")
    write_self_signed(cert, tmp_path / "other-key.pem", "mail.test", key_type=before)
    assert not gateway.server.certificates.reload()
    assert (
        served_serial(gateway.tls_port, Path(renewed_pem))
        == starttls_serial(gateway.port, Path(renewed_pem))
        == renewed.serial
    )
