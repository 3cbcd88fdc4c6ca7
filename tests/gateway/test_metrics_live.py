"""What a live gateway counts, read from its own registry (one process: the text
``runsmtp --metrics-port`` serves): TLS handshakes and their failures on both
listeners, connections refused by a limit, messages refused by reason, records
kept while the database is away. The metrics are per process and tests share
it, so each test compares counts before and after."""

from __future__ import annotations

import smtplib
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
import uvloop

from inboxes.models import Inbox
from smtpgateway.metrics import gateway_families
from tests.dbfaults import shorten_lock_timeout, write_lock
from tests.helpers import VALID_EMAIL, VALID_INBOX, VALID_KEY, GatewayFactory, LiveGateway, auth, eventually


def value(name: str, **labels: str) -> float:
    found = gateway_families().registry.get_sample_value(name, labels)
    assert found is not None, f"no sample {name}{labels}"
    return found


class Counts:
    """The metric values at one moment, to compare with later ones."""

    def __init__(self, *series: tuple[str, dict[str, str]]) -> None:
        self.series = series
        self.before = [value(name, **labels) for name, labels in series]

    def grew(self) -> list[float]:
        return [value(name, **labels) - before for (name, labels), before in zip(self.series, self.before, strict=True)]


@pytest.fixture
def tls_gateway(gateway_factory: GatewayFactory, scenarios: None, certificate: tuple[Path, Path]) -> LiveGateway:
    cert, key = certificate
    # On uvloop, as runsmtp runs by default: a connection whose handshake failed is
    # freed at once, and so counted at once. (asyncio's own loop keeps it in a
    # reference cycle until the next garbage collection; counted then.)
    return gateway_factory(
        loop_factory=uvloop.new_event_loop, tls_cert_file=cert, tls_key_file=key, tls_port=0, metrics=True
    )


def handshakes(listener: str) -> tuple[str, dict[str, str]]:
    return ("agentmail_smtp_tls_handshakes_total", {"listener": listener, "version": "TLSv1.3"})


def failures(listener: str) -> tuple[str, dict[str, str]]:
    return ("agentmail_smtp_tls_handshake_failures_total", {"listener": listener})


def test_tls_handshakes_and_failures_on_both_listeners(
    tls_gateway: LiveGateway, client_context: ssl.SSLContext
) -> None:
    counts = Counts(
        handshakes("submission"), handshakes("implicit_tls"), failures("submission"), failures("implicit_tls")
    )
    with tls_gateway.smtp() as client:
        client.starttls(context=client_context)
        client.ehlo("tester.example")
    with smtplib.SMTP_SSL("127.0.0.1", tls_gateway.tls_port, context=client_context, timeout=10) as client:
        client.ehlo("tester.example")
    # STARTTLS answered with bytes that are no TLS:
    wire = tls_gateway.wire()
    wire.command("EHLO tester.example")
    assert wire.command("STARTTLS") == "220 2.0.0 Ready to start TLS"
    wire.sock.sendall(b"\x00\xffGET / HTTP/1.1\r\n\r\n" * 50)
    assert wire.closed_by_server()
    # The same on the implicit-TLS port, twice: asyncio tells the protocol nothing of these.
    for _ in range(2):
        with socket.create_connection(("127.0.0.1", tls_gateway.tls_port), timeout=10) as raw:
            raw.sendall(b"EHLO not-tls\r\n" * 10)
            while raw.recv(4096):
                pass
    eventually(lambda: counts.grew() == [1, 1, 1, 2], timeout=5)


def test_refused_connections_and_messages_by_reason(gateway_factory: GatewayFactory, scenarios: None) -> None:
    gateway = gateway_factory(metrics=True, max_connections_per_ip=1, max_message_size=2000)
    counts = Counts(
        ("agentmail_smtp_connections_refused_total", {"reason": "max_connections_per_ip"}),
        ("agentmail_smtp_messages_refused_total", {"reason": "sender_not_owned"}),
        ("agentmail_smtp_messages_refused_total", {"reason": "message_too_large"}),
        ("agentmail_smtp_messages_refused_total", {"reason": "author_not_inbox"}),
        ("agentmail_smtp_messages_accepted_total", {}),
        ("agentmail_smtp_replies_total", {"code_class": "4xx"}),
    )
    with gateway.smtp() as client:
        second = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
        assert second.recv(200).startswith(b"421 4.7.0 Too many connections")
        second.close()
        assert auth(client, "PLAIN", VALID_INBOX, VALID_KEY)[0] == 235
        with pytest.raises(smtplib.SMTPSenderRefused):
            client.sendmail("someone.else@example.com", ["a@example.com"], b"Subject: x\r\n\r\nbody\r\n")
        with pytest.raises(smtplib.SMTPSenderRefused):  # smtplib sends SIZE=, refused at MAIL
            client.sendmail(VALID_EMAIL, ["a@example.com"], b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 50)
        client.rset()
        client.mail(VALID_EMAIL)  # without SIZE=: read to its end, then refused
        client.rcpt("a@example.com")
        assert client.data(b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 50)[0] == 552
        with pytest.raises(smtplib.SMTPDataError):
            client.sendmail(VALID_EMAIL, ["a@example.com"], b"From: boss@example.com\r\n\r\nbody\r\n")
        client.sendmail(VALID_EMAIL, ["a@example.com"], f"From: {VALID_EMAIL}\r\n\r\nbody\r\n".encode())
    eventually(lambda: counts.grew()[:5] == [1, 1, 1, 1, 1], timeout=5)
    assert counts.grew()[5] >= 1  # the 421


def test_records_kept_while_the_database_is_locked(
    gateway_factory: Any, scenarios: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    shorten_lock_timeout(monkeypatch, 0.5)
    gateway = gateway_factory(metrics=True)
    with write_lock():
        with gateway.smtp() as client:
            assert auth(client, "PLAIN", VALID_INBOX, VALID_KEY)[0] == 235
        gateway.settle()  # the committer waited 0.5 s for the lock, then kept the record
        eventually(lambda: value("agentmail_smtp_auth_records_kept") == 1, timeout=5)
    with gateway.smtp() as client:  # the database is back: the next batch writes it
        assert auth(client, "PLAIN", VALID_INBOX, VALID_KEY)[0] == 235
    gateway.settle()
    eventually(lambda: value("agentmail_smtp_auth_records_kept") == 0, timeout=5)


def test_recipients_refused_by_the_daily_limits_and_bearer_mechanisms(
    gateway_factory: GatewayFactory, scenarios: None
) -> None:
    Inbox.objects.filter(inbox_id=VALID_INBOX).update(daily_recipient_limit=1)
    gateway = gateway_factory(metrics=True)
    counts = Counts(
        ("agentmail_smtp_recipients_refused_total", {"reason": "daily_limit_inbox"}),
        ("agentmail_smtp_auth_attempts_total", {"mechanism": "XOAUTH2", "outcome": "success", "reason": "OK"}),
    )
    with gateway.smtp() as client:
        bearer = f"user={VALID_INBOX}\x01auth=Bearer {VALID_KEY}\x01\x01"
        assert client.auth("XOAUTH2", lambda challenge=None: bearer)[0] == 235
        refused = client.sendmail(VALID_EMAIL, ["a@example.com", "b@example.com"], f"From: {VALID_EMAIL}\r\n\r\nhi\r\n")
    assert list(refused) == ["b@example.com"]
    eventually(lambda: counts.grew() == [1, 1])
