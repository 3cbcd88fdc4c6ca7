"""Delivery against real SMTP servers on loopback: mail accepted by a live
gateway, delivered by ``manage.py deliver --once`` (the real command, in this
process) to an aiosmtpd sink as the smarthost (STARTTLS and AUTH; implicit TLS),
an upstream that defers, one that refuses a recipient, one that never speaks, one
that is not there and then is; bounces; DKIM; the file outbox."""

from __future__ import annotations

import email
import io
import smtplib
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import dkim
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings
from django.utils import timezone

from delivery.models import DeliveryAttempt, DkimKey, Recipient
from inboxes.models import Message
from smtpgateway.storage.sending_limits import counted
from tests.helpers import VALID_EMAIL, VALID_INBOX, VALID_KEY, LiveGateway, free_port
from tests.sinks import SINK_PASSWORD, SilentServer, Sink

pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")

FAST = {
    "DELIVERY_MIN_BACKOFF": 0.2,
    "DELIVERY_MAX_BACKOFF": 1.0,
    "DELIVERY_CONNECT_TIMEOUT": 2.0,
    "DELIVERY_POLL_INTERVAL": 0.05,
}


def submit(gateway: LiveGateway, recipients: list[str], subject: str = "hello", message_id: str | None = None) -> str:
    """Send one message through the gateway as the demo inbox; its queue id."""
    message = EmailMessage()
    message["From"] = f"Agent <{VALID_EMAIL}>"
    message["To"] = ", ".join(recipients)
    message["Subject"] = subject
    message["Message-ID"] = message_id or f"<{subject.replace(' ', '-')}-{time.monotonic_ns()}@agentmail.dev>"
    message.set_content("Hi there.\n")
    with gateway.smtp() as client:
        client.login(VALID_INBOX, VALID_KEY)
        client.send_message(message, to_addrs=recipients)
    return Message.objects.latest("created_at").queue_id


def deliver(relay: str, **settings: Any) -> str:
    """``manage.py deliver --once`` with ``relay`` as DELIVERY_RELAY_URL; its output."""
    out = io.StringIO()
    with override_settings(DELIVERY_RELAY_URL=relay, **(FAST | settings)):
        call_command("deliver", "--once", stdout=out)
    return out.getvalue()


def statuses(queue_id: str) -> dict[str, str]:
    return dict(Recipient.objects.filter(message_id=queue_id).values_list("address", "status"))


@pytest.fixture
def smarthost(certificate: tuple[Path, Path], extra_secrets: list[str]) -> Iterator[Sink]:
    extra_secrets.append(SINK_PASSWORD)
    sink = Sink("starttls", certificate).start()
    yield sink
    sink.stop()


@pytest.fixture
def plain_sink() -> Iterator[Sink]:
    sink = Sink("plain").start()
    yield sink
    sink.stop()


def test_the_smarthost_gets_each_recipient_over_starttls_with_auth(
    gateway: LiveGateway, smarthost: Sink, certificate: tuple[Path, Path]
) -> None:
    one = submit(gateway, ["a@example.com"], "one")
    two = submit(gateway, ["b@example.com", "c@example.org"], "two")
    output = deliver(smarthost.url(ca=certificate[0]))
    assert "delivering to 127.0.0.1" in output and "STARTTLS required, AUTH as relay-user" in output
    assert SINK_PASSWORD not in output
    got = smarthost.handler.received
    assert sorted((item.sender, tuple(item.recipients)) for item in got) == [
        (VALID_EMAIL, ("a@example.com",)),
        (VALID_EMAIL, ("b@example.com", "c@example.org")),  # one SMTP transaction for both
    ]
    assert all(b"Received: from tester.example" in item.content for item in got)
    assert statuses(one) == {"a@example.com": "delivered"} and set(statuses(two).values()) == {"delivered"}
    assert set(Message.objects.values_list("status", flat=True)) == {"delivered"}
    attempt = DeliveryAttempt.objects.filter(recipient__address="a@example.com").get()
    assert attempt.result == "delivered" and attempt.code == 250 and attempt.reply.startswith("250 2.0.0")
    assert attempt.tls_version.startswith("TLSv1.") and attempt.tls_cipher
    assert attempt.dkim == "unsigned: no DKIM key for agentmail.dev"


def test_implicit_tls_upstream(gateway: LiveGateway, certificate: tuple[Path, Path], extra_secrets: list[str]) -> None:
    extra_secrets.append(SINK_PASSWORD)
    sink = Sink("smtps", certificate).start()
    try:
        queue_id = submit(gateway, ["a@example.com"])
        deliver(sink.url(ca=certificate[0]))
    finally:
        sink.stop()
    assert statuses(queue_id) == {"a@example.com": "delivered"}
    assert [item.recipients for item in sink.handler.received] == [["a@example.com"]]


def test_an_unverified_certificate_defers(gateway: LiveGateway, smarthost: Sink) -> None:
    """Without ?ca= the self-signed certificate is not trusted: nothing is sent in the clear."""
    queue_id = submit(gateway, ["a@example.com"])
    deliver(smarthost.url())
    assert statuses(queue_id) == {"a@example.com": "deferred"}
    assert "TLS failed" in Recipient.objects.get().last_reply
    assert smarthost.handler.received == []


def test_temporary_failures_are_retried_with_backoff(gateway: LiveGateway, plain_sink: Sink) -> None:
    plain_sink.handler.data_replies = ["451 4.3.0 Try again later", "451 4.3.0 Try again later"]
    queue_id = submit(gateway, ["a@example.com"])
    deliver(plain_sink.url())
    recipient = Recipient.objects.get()
    assert (recipient.status, recipient.attempts, recipient.last_code) == ("deferred", 1, 451)
    assert Message.objects.get().status == "sending"
    first_wait = (recipient.next_attempt_at - DeliveryAttempt.objects.get().started_at).total_seconds()
    deliver(plain_sink.url())  # not due yet: nothing happens
    assert Recipient.objects.get().attempts == 1
    deadline = time.monotonic() + 10
    while Recipient.objects.get().status != "delivered":
        assert time.monotonic() < deadline
        time.sleep(0.1)
        deliver(plain_sink.url())
    attempts = list(DeliveryAttempt.objects.order_by("started_at"))
    assert [a.result for a in attempts] == ["deferred", "deferred", "delivered"]
    second_wait = (attempts[2].started_at - attempts[1].started_at).total_seconds()
    assert 0.2 <= first_wait < 0.5 and second_wait >= 0.4  # 0.2 s, then doubled
    assert statuses(queue_id) == {"a@example.com": "delivered"} and len(plain_sink.handler.received) == 1


def test_a_refused_recipient_bounces_and_its_sender_gets_a_dsn(gateway: LiveGateway, plain_sink: Sink) -> None:
    plain_sink.handler.rcpt_replies = {"nobody@example.com": "550 5.1.1 <nobody@example.com>: no such user"}
    queue_id = submit(gateway, ["a@example.com", "nobody@example.com"], "partly")
    deliver(plain_sink.url())
    assert statuses(queue_id) == {"a@example.com": "delivered", "nobody@example.com": "bounced"}
    assert Message.objects.get(queue_id=queue_id).status == "partly delivered"
    dsn = Message.objects.get(envelope_from="")
    assert dsn.envelope_to == [VALID_EMAIL] and dsn.inbox.inbox_id == VALID_INBOX
    deliver(plain_sink.url())  # the bounce is delivered like any message
    bounce = [item for item in plain_sink.handler.received if item.sender == ""]
    assert [item.recipients for item in bounce] == [[VALID_EMAIL]]
    report = email.message_from_bytes(bounce[0].content)
    assert report.get_content_type() == "multipart/report" and report.get_param("report-type") == "delivery-status"
    assert report["From"] == f"Mail Delivery System <MAILER-DAEMON@{gateway.config.hostname}>"
    parts = [part.get_content_type() for part in report.walk()]
    assert "message/delivery-status" in parts and "text/rfc822-headers" in parts
    text = bounce[0].content.decode()
    assert "Final-Recipient: rfc822; nobody@example.com" in text and "Status: 5.1.1" in text
    assert "Diagnostic-Code: smtp; 550 5.1.1 <nobody@example.com>: no such user" in text
    assert "Subject: partly" in text  # the original headers
    assert Message.objects.get(queue_id=dsn.queue_id).status == "delivered"
    # The daily limits count the two recipients submitted, not the bounce.
    inbox = dsn.inbox
    assert counted(inbox.pk, inbox.organization_id, timezone.now()) == (2, 2)


def test_a_bounce_is_never_bounced(gateway: LiveGateway, plain_sink: Sink) -> None:
    plain_sink.handler.rcpt_replies = {
        "nobody@example.com": "550 5.1.1 no such user",
        VALID_EMAIL: "550 5.1.1 no such user either",
    }
    submit(gateway, ["nobody@example.com"])
    deliver(plain_sink.url())
    deliver(plain_sink.url())
    assert Message.objects.count() == 2  # the message and one bounce, not a bounce of the bounce
    assert set(Recipient.objects.values_list("status", flat=True)) == {"bounced"}


def test_an_upstream_that_never_speaks_times_out_and_defers(gateway: LiveGateway) -> None:
    silent = SilentServer()
    try:
        submit(gateway, ["a@example.com"])
        started = time.monotonic()
        deliver(f"smtp://127.0.0.1:{silent.port}?tls=none", DELIVERY_CONNECT_TIMEOUT=0.5, DELIVERY_COMMAND_TIMEOUT=0.5)
        assert time.monotonic() - started < 5
    finally:
        silent.close()
    recipient = Recipient.objects.get()
    assert (recipient.status, recipient.last_reply) == ("deferred", "timed out")


def test_an_absent_upstream_defers_until_it_is_back(gateway: LiveGateway) -> None:
    port = free_port()
    queue_id = submit(gateway, ["a@example.com"])
    deliver(f"smtp://127.0.0.1:{port}?tls=none")
    assert Recipient.objects.get().last_reply == "connection refused"
    sink = Sink("plain", port=port).start()
    try:
        call_command("deliver", "--flush", stdout=io.StringIO())  # due now, like postqueue -f
        deliver(f"smtp://127.0.0.1:{port}?tls=none", DELIVERY_MIN_BACKOFF=300, DELIVERY_MAX_BACKOFF=300)
    finally:
        sink.stop()
    assert statuses(queue_id) == {"a@example.com": "delivered"}


def test_an_undeliverable_recipient_expires_with_a_dsn(gateway: LiveGateway) -> None:
    submit(gateway, ["a@example.com"])
    deliver(f"smtp://127.0.0.1:{free_port()}?tls=none", DELIVERY_MAX_LIFETIME=0)
    assert Recipient.objects.get(address="a@example.com").status == "expired"
    bounce = Message.objects.get(envelope_from="")
    assert b"Status: 4.4.7" in bytes(bounce.raw) and b"Action: failed" in bytes(bounce.raw)


@pytest.mark.parametrize("algorithms", [["rsa-sha256"], ["ed25519-sha256"], ["rsa-sha256", "ed25519-sha256"]])
def test_dkim_signatures_verify_against_the_published_records(
    gateway: LiveGateway, plain_sink: Sink, algorithms: list[str]
) -> None:
    for n, algorithm in enumerate(algorithms):
        out = io.StringIO()
        call_command("dkimkey", "add", "agentmail.dev", "--selector", f"s{n}", "--algorithm", algorithm, stdout=out)
        assert f"s{n}._domainkey.agentmail.dev. IN TXT" in out.getvalue()
        assert "PRIVATE" not in out.getvalue()
    submit(gateway, ["a@example.com"])
    deliver(plain_sink.url())
    records = {f"{key.dns_name}.".encode(): key.dns_value.encode() for key in DkimKey.objects.all()}
    content = plain_sink.handler.received[0].content
    assert content.count(b"DKIM-Signature:") == len(algorithms)

    def published(name: bytes, timeout: int = 5) -> bytes:
        return records[name]

    signed = dkim.DKIM(content)
    for n in range(len(algorithms)):  # each signature, with the record its selector names
        assert signed.verify(idx=n, dnsfunc=published)
    used = DeliveryAttempt.objects.get().dkim
    assert all(f"({algorithm})" in used for algorithm in algorithms)


def test_the_file_outbox_for_development(gateway: LiveGateway, tmp_path: Path) -> None:
    queue_id = submit(gateway, ["a@example.com", "b@example.com"])
    deliver(f"file://{tmp_path}/outbox")
    files = sorted(path.name for path in (tmp_path / "outbox").iterdir())
    assert len(files) == 2 and all(name.startswith(f"{queue_id}.") and name.endswith(".eml") for name in files)
    assert set(statuses(queue_id).values()) == {"delivered"}


def test_deliver_refuses_to_start_without_a_relay(transactional_db: None) -> None:
    with pytest.raises(CommandError, match="DELIVERY_RELAY_URL is not set"):
        deliver("")
    with pytest.raises(CommandError, match="tls=none is only for"):
        deliver("smtp://192.0.2.1:25?tls=none")


def test_mailq_lists_what_waits_and_why(gateway: LiveGateway) -> None:
    queue_id = submit(gateway, ["a@example.com"])
    out = io.StringIO()
    call_command("mailq", stdout=out)
    assert queue_id in out.getvalue() and "not tried yet" in out.getvalue() and "a@example.com" in out.getvalue()
    deliver(f"smtp://127.0.0.1:{free_port()}?tls=none")
    out = io.StringIO()
    call_command("mailq", stdout=out)
    assert "connection refused; next try" in out.getvalue()


def test_messages_queued_before_delivery_get_their_recipients(gateway: LiveGateway) -> None:
    """The data migration's rule, as the committer applies it now: one recipient
    per envelope recipient, due at once."""
    queue_id = submit(gateway, ["a@example.com", "b@example.com"])
    assert statuses(queue_id) == {"a@example.com": "queued", "b@example.com": "queued"}


def test_the_from_header_must_be_the_inbox(gateway: LiveGateway) -> None:
    def send(headers: str) -> tuple[int, str]:
        with gateway.smtp() as client:
            client.login(VALID_INBOX, VALID_KEY)
            try:
                client.sendmail(VALID_EMAIL, ["a@example.com"], (headers + "\r\n\r\nbody\r\n").encode())
            except smtplib.SMTPDataError as refused:
                error = refused.smtp_error
                return refused.smtp_code, error.decode() if isinstance(error, bytes) else error
        return 250, ""

    accepted = [
        f"From: {VALID_EMAIL}",
        f"From: Agent Smith <{VALID_EMAIL}>",
        f'From: "Smith, Agent" <{VALID_EMAIL.replace("agentmail.dev", "AgentMail.DEV")}>',
        f"From: =?utf-8?q?Agent_=C3=A9?= <{VALID_EMAIL}>",
        f"From: {VALID_EMAIL}\r\nSender: {VALID_EMAIL}",
    ]
    for headers in accepted:
        assert send(headers) == (250, ""), headers
    from_refused = [
        "Subject: no From at all",
        "From: someone@example.com",
        f"From: {VALID_EMAIL}, other@example.com",
        f"From: agents: {VALID_EMAIL};",
        f"From: {VALID_EMAIL}\r\nFrom: {VALID_EMAIL}",
        "From: =?utf-8?q?test?=@agentmail.dev",
        "From: TEST@agentmail.dev",  # the local part as stored
    ]
    for headers in from_refused:
        assert send(headers) == (550, f"5.7.1 The From header must be exactly one address, {VALID_EMAIL}"), headers
    assert send(f"From: {VALID_EMAIL}\r\nSender: other@example.com") == (
        550,
        f"5.7.1 The Sender header must be absent or {VALID_EMAIL}",
    )
    assert Message.objects.count() == len(accepted)


def test_the_message_page_shows_its_delivery_and_links_its_session(
    gateway: LiveGateway, plain_sink: Sink, admin_client: Any
) -> None:
    plain_sink.handler.rcpt_replies = {"nobody@example.com": "550 5.1.1 no such user"}
    queue_id = submit(gateway, ["a@example.com", "nobody@example.com"])
    deliver(plain_sink.url())
    message = Message.objects.get(queue_id=queue_id)
    assert message.session_id
    page = admin_client.get(f"/admin/inboxes/message/{message.pk}/change/").content.decode()
    assert f"?session_id={message.session_id}" in page  # the AuthAttempt list, filtered by session
    assert "550 5.1.1 no such user" in page and "bounced" in page and "delivered" in page
    assert "unsigned: no DKIM key for agentmail.dev" in page
    attempts = admin_client.get(f"/admin/smtpgateway/authattempt/?q={message.session_id}").context["cl"].result_list
    assert [attempt.reason for attempt in attempts] == ["OK"]
    listed = (
        admin_client.get("/admin/inboxes/message/", {"status__exact": "partly delivered"}).context["cl"].result_list
    )
    assert [row.queue_id for row in listed] == [queue_id]
    admin_client.post("/admin/inboxes/message/", {"action": "cancel_delivery", "_selected_action": [message.pk]})
    assert statuses(queue_id) == {
        "a@example.com": "delivered",
        "nobody@example.com": "bounced",
    }  # nothing left to cancel


def test_operators_retry_now_and_cancel(gateway: LiveGateway, admin_client: Any) -> None:
    queue_id = submit(gateway, ["a@example.com"])
    deliver(f"smtp://127.0.0.1:{free_port()}?tls=none", DELIVERY_MIN_BACKOFF=300, DELIVERY_MAX_BACKOFF=300)
    recipient = Recipient.objects.get()
    assert recipient.status == "deferred" and recipient.next_attempt_at > timezone.now()
    message = Message.objects.get(queue_id=queue_id)
    admin_client.post("/admin/inboxes/message/", {"action": "retry_now", "_selected_action": [message.pk]})
    assert Recipient.objects.get().next_attempt_at <= timezone.now()
    admin_client.post("/admin/inboxes/message/", {"action": "cancel_delivery", "_selected_action": [message.pk]})
    assert statuses(queue_id) == {"a@example.com": "cancelled"}
    assert Message.objects.get(queue_id=queue_id).status == "cancelled"
    assert not Message.objects.filter(envelope_from="").exists()  # a cancellation sends no bounce


def test_the_banner_warns_of_a_plaintext_upstream_and_of_files(
    scenarios: None, plain_sink: Sink, tmp_path: Path
) -> None:
    plain = deliver(plain_sink.url())
    assert "tls=none" in plain_sink.url()
    assert "WARNING:     no TLS to the upstream (tls=none): for a loopback sink only" in plain
    files = deliver(f"file://{tmp_path / 'outbox'}")
    assert "NOTE:        mail is written to files, not sent (development)" in files and "WARNING" not in files
