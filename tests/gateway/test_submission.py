"""The mail transaction after AUTH: who may send, how much, and what is stored."""

from __future__ import annotations

import smtplib
from email.message import EmailMessage
from typing import Any

import pytest

from inboxes.models import Inbox, Message
from tests.helpers import VALID_EMAIL, VALID_INBOX, VALID_KEY, LiveGateway, auth, authenticated_wire, b64, eventually


def sample_message(subject: str = "Hello from an agent", body: str = "Hi there.\n") -> EmailMessage:
    message = EmailMessage()
    message["From"] = VALID_EMAIL
    message["To"] = "someone@example.com"
    message["Subject"] = subject
    message["Message-ID"] = "<abc123@agentmail.dev>"
    message.set_content(body)
    return message


def test_mail_before_auth_is_refused(gateway: LiveGateway) -> None:
    wire = gateway.wire()
    wire.command("EHLO tester.example")
    assert wire.command(f"MAIL FROM:<{VALID_EMAIL}>") == "530 5.7.0 Authentication required"
    assert wire.command("RCPT TO:<a@example.com>") == "530 5.7.0 Authentication required"
    assert wire.command("DATA") == "530 5.7.0 Authentication required"


def test_sender_must_be_the_inbox_address(gateway: LiveGateway, caplog: pytest.LogCaptureFixture) -> None:
    wire = authenticated_wire(gateway)
    assert (
        wire.command("MAIL FROM:<someone-else@agentmail.dev>") == "553 5.7.1 Sender address not allowed for this inbox"
    )
    assert any("Sender rejected" in r.getMessage() for r in caplog.records)
    # Case of the address does not matter.
    assert wire.command("MAIL FROM:<TEST@AgentMail.dev>") == "250 2.1.0 Sender OK"


def test_recipient_limit(gateway: LiveGateway) -> None:
    wire = authenticated_wire(gateway)
    wire.command(f"MAIL FROM:<{VALID_EMAIL}>")
    for n in range(100):
        assert wire.command(f"RCPT TO:<r{n}@example.com>") == "250 2.1.5 Recipient OK"
    assert wire.command("RCPT TO:<r100@example.com>") == "452 4.5.3 Too many recipients"


def test_a_repeated_recipient_is_kept_once(gateway: LiveGateway) -> None:
    """Accepted each time, stored once; the domain's case does not make another
    mailbox, the local part's does (RFC 5321 2.4). A repeat takes no place under
    the recipient limit."""
    with gateway.smtp() as client:
        auth(client, "PLAIN", VALID_INBOX, VALID_KEY)
        recipients = [
            "a@example.com",
            "a@EXAMPLE.com",
            "<@relay.example:a@example.com>",
            "A@example.com",
            "a@example.com",
        ]
        refused = client.sendmail(VALID_EMAIL, recipients, b"From: test@agentmail.dev\r\nSubject: twice\r\n\r\nx\r\n")
    assert refused == {}
    assert Message.objects.get().envelope_to == ["a@example.com", "A@example.com"]
    wire = authenticated_wire(gateway)
    wire.command(f"MAIL FROM:<{VALID_EMAIL}>")
    for n in range(100):
        assert wire.command(f"RCPT TO:<r{n}@example.com>") == "250 2.1.5 Recipient OK"
    assert wire.command("RCPT TO:<r7@Example.COM>") == "250 2.1.5 Recipient OK"
    assert wire.command("RCPT TO:<r100@example.com>") == "452 4.5.3 Too many recipients"


def test_declared_size_over_limit(gateway: LiveGateway) -> None:
    wire = authenticated_wire(gateway)
    assert wire.command(f"MAIL FROM:<{VALID_EMAIL}> SIZE=10485761") == "552 5.2.3 Message too large"
    assert wire.command(f"MAIL FROM:<{VALID_EMAIL}> SIZE=10485760") == "250 2.1.0 Sender OK"


def test_body_over_limit_is_refused_and_not_stored(gateway_factory, scenarios) -> None:  # type: ignore[no-untyped-def]
    gateway = gateway_factory(max_message_size=2000)
    big = b"From: test@agentmail.dev\r\nSubject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 40
    # A client that declares the size (smtplib does) is refused at MAIL FROM.
    with gateway.smtp() as client:
        auth(client, "PLAIN", VALID_INBOX, VALID_KEY)
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            client.sendmail(VALID_EMAIL, ["a@example.com"], big)
        assert (refused.value.smtp_code, refused.value.smtp_error) == (552, b"5.2.3 Message too large")
    # One that does not is refused after DATA, and the session goes on.
    wire = authenticated_wire(gateway)
    wire.command(f"MAIL FROM:<{VALID_EMAIL}>")
    wire.command("RCPT TO:<a@example.com>")
    wire.command("DATA")
    wire.sock.sendall(big + b".\r\n")
    assert wire.reply() == ["552 5.2.3 Message too large"]
    assert wire.command("NOOP") == "250 2.0.0 OK"
    assert not Message.objects.exists()


def test_accepted_message_is_committed_before_250(gateway: LiveGateway) -> None:
    with gateway.smtp() as client:
        auth(client, "PLAIN", VALID_INBOX, VALID_KEY)
        refused = client.send_message(sample_message(), to_addrs=["a@example.com", "b@example.com"])
    assert refused == {}
    message = Message.objects.get()
    assert message.inbox.inbox_id == VALID_INBOX
    assert message.envelope_from == VALID_EMAIL
    assert message.envelope_to == ["a@example.com", "b@example.com"]
    assert message.subject == "Hello from an agent"
    assert message.message_id == "<abc123@agentmail.dev>"
    assert message.status == "queued"
    raw = bytes(message.raw)
    received_by, received_at, content = raw.split(b"\r\n", 3)[1:]
    assert raw.startswith(b"Received: from tester.example ([127.0.0.1])\r\n")
    assert received_by.startswith(b"\tby ") and received_by.endswith(b" with ESMTPA id " + message.queue_id.encode())
    assert received_at.startswith(b"\t; ")  # two recipients: none is named
    assert content.startswith(b"From: test@agentmail.dev\r\n")
    assert message.size == len(content)


def test_queue_id_in_reply_matches_stored_row(gateway: LiveGateway) -> None:
    wire = authenticated_wire(gateway)
    wire.command(f"MAIL FROM:<{VALID_EMAIL}>")
    wire.command("RCPT TO:<a@example.com>")
    assert wire.command("DATA") == "354 End data with <CR><LF>.<CR><LF>"
    body = b"From: test@agentmail.dev\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\n\r\n..leading dot\r\nline two\r\n"
    wire.sock.sendall(body + b".\r\n")
    reply = wire.reply()[-1]
    assert reply.startswith("250 2.0.0 Ok: queued as ")
    queue_id = reply.rsplit(" ", 1)[1]
    message = Message.objects.get(queue_id=queue_id)
    assert message.subject == "café"
    assert bytes(message.raw).endswith(b"\r\n\r\n.leading dot\r\nline two\r\n")  # dot-unstuffed
    assert b"for <a@example.com>; " in bytes(message.raw)
    assert message.size == len(body) - 1  # minus the transparency dot


def test_several_messages_per_connection_and_rset(gateway: LiveGateway) -> None:
    wire = authenticated_wire(gateway)
    for n in range(3):
        wire.command(f"MAIL FROM:<{VALID_EMAIL}>")
        wire.command("RCPT TO:<a@example.com>")
        wire.command("DATA")
        wire.sock.sendall(f"From: test@agentmail.dev\r\nSubject: number {n}\r\n\r\nbody\r\n.\r\n".encode())
        assert wire.reply()[-1].startswith("250 2.0.0 Ok: queued as ")
    wire.command(f"MAIL FROM:<{VALID_EMAIL}>")
    assert wire.command("RSET") == "250 2.0.0 OK"
    assert wire.command("RCPT TO:<a@example.com>") == "503 5.5.1 Error: need MAIL command"
    assert wire.command(f"MAIL FROM:<{VALID_EMAIL}>") == "250 2.1.0 Sender OK"
    assert sorted(Message.objects.values_list("subject", flat=True)) == ["number 0", "number 1", "number 2"]


def test_pipelined_transaction(gateway: LiveGateway) -> None:
    """RFC 2920: the client sends MAIL, RCPTs and DATA in one write."""
    wire = authenticated_wire(gateway)
    wire.sock.sendall(
        f"MAIL FROM:<{VALID_EMAIL}>\r\nRCPT TO:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n".encode()
    )
    replies = [wire.reply()[-1] for _ in range(4)]
    assert replies == [
        "250 2.1.0 Sender OK",
        "250 2.1.5 Recipient OK",
        "250 2.1.5 Recipient OK",
        "354 End data with <CR><LF>.<CR><LF>",
    ]
    wire.sock.sendall(b"From: test@agentmail.dev\r\nSubject: piped\r\n\r\nbody\r\n.\r\nQUIT\r\n")
    assert wire.reply()[-1].startswith("250 2.0.0 Ok: queued as ")
    assert wire.reply()[-1] == "221 2.0.0 Bye"
    assert Message.objects.get().subject == "piped"


@pytest.mark.parametrize("fake_end", [b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r", b"\r\n.\r"])
def test_only_crlf_dot_crlf_ends_the_data(gateway: LiveGateway, fake_end: bytes) -> None:
    """SMTP smuggling (CVE-2023-51764 and kin; aiosmtpd's CVE-2024-27305): an end
    of data spelt with a bare LF or CR must not end it here, or what follows would
    run as commands, a second message in the same write. It stays part of the
    one message, stored as sent."""
    wire = authenticated_wire(gateway)
    assert wire.command(f"MAIL FROM:<{VALID_EMAIL}>") == "250 2.1.0 Sender OK"
    assert wire.command("RCPT TO:<a@example.com>") == "250 2.1.5 Recipient OK"
    wire.command("DATA")
    smuggled = (
        b"MAIL FROM:<" + VALID_EMAIL.encode() + b">\r\nRCPT TO:<b@example.com>\r\nDATA\r\nSubject: smuggled\r\n\r\nx"
    )
    wire.sock.sendall(b"From: test@agentmail.dev\r\nSubject: outer\r\n\r\nbody" + fake_end + smuggled + b"\r\n.\r\n")
    assert wire.reply()[-1].startswith("250 2.0.0 Ok: queued as ")
    assert wire.command("NOOP") == "250 2.0.0 OK"  # no replies to smuggled commands came first
    message = Message.objects.get()
    assert (message.subject, message.envelope_to) == ("outer", ["a@example.com"])
    # A line (up to CRLF) that starts with a dot loses it, as dot stuffing asks.
    assert b"body" + fake_end.replace(b"\r\n.", b"\r\n") + smuggled + b"\r\n" in bytes(message.raw)


def test_eight_bit_and_smtputf8(gateway: LiveGateway) -> None:
    wire = authenticated_wire(gateway)
    assert wire.command(f"MAIL FROM:<{VALID_EMAIL}> BODY=8BITMIME SMTPUTF8") == "250 2.1.0 Sender OK"
    assert wire.command("RCPT TO:<josé@exämple.com>".encode()) == "250 2.1.5 Recipient OK"
    wire.command("DATA")
    wire.sock.sendall("From: test@agentmail.dev\r\nSubject: naïve\r\n\r\nüñíçødé\r\n.\r\n".encode())
    assert wire.reply()[-1].startswith("250 2.0.0")
    message = Message.objects.get()
    assert message.envelope_to == ["josé@exämple.com"]
    assert "üñíçødé".encode() in bytes(message.raw)


def test_an_address_beyond_ascii_needs_smtputf8_declared(gateway: LiveGateway) -> None:
    """RFC 6531 3.5: without SMTPUTF8 on MAIL, a non-ASCII address is refused
    with 5.6.7 (as Postfix does); the transaction goes on for the others."""
    wire = authenticated_wire(gateway)
    assert (
        wire.command("MAIL FROM:<tëst@agentmail.dev>".encode())
        == "553 5.6.7 Must declare SMTPUTF8 to send unicode address"
    )
    assert wire.command(f"MAIL FROM:<{VALID_EMAIL}>") == "250 2.1.0 Sender OK"
    assert (
        wire.command("RCPT TO:<josé@exämple.com>".encode()) == "553 5.6.7 Must declare SMTPUTF8 to send unicode address"
    )
    assert wire.command("RCPT TO:<jose@example.com>") == "250 2.1.5 Recipient OK"
    wire.command("DATA")
    wire.sock.sendall(b"From: test@agentmail.dev\r\nSubject: ascii\r\n\r\nhi\r\n.\r\n")
    assert wire.reply()[-1].startswith("250 2.0.0")
    assert Message.objects.get().envelope_to == ["jose@example.com"]


@pytest.mark.parametrize(
    "headers, subject, message_id",
    [
        (
            b"From: test@agentmail.dev\r\nSubject: a \x00 inside\r\nMessage-ID: <a\x00b@example.com>\r\n",
            "a \ufffd inside",
            "<a\ufffdb@example.com>",
        ),
        (b"From: test@agentmail.dev\r\nSubject: =?utf-8?q?encoded_=00_too?=\r\n", "encoded \ufffd too", ""),
    ],
    ids=["as sent", "RFC 2047-encoded"],
)
def test_a_nul_in_a_header_is_stored_not_refused(
    gateway: LiveGateway, headers: bytes, subject: str, message_id: str
) -> None:
    """PostgreSQL refuses a NUL in a text column: such a message was answered 451
    on every retry. The summary columns show it as U+FFFD; raw keeps the bytes."""
    wire = authenticated_wire(gateway)
    assert wire.command(f"MAIL FROM:<{VALID_EMAIL}>") == "250 2.1.0 Sender OK"
    assert wire.command("RCPT TO:<a@example.com>") == "250 2.1.5 Recipient OK"
    wire.command("DATA")
    wire.sock.sendall(headers + b"\r\nbody\r\n.\r\n")
    assert wire.reply()[-1].startswith("250 2.0.0")
    message = Message.objects.get()
    assert (message.subject, message.message_id) == (subject, message_id)
    assert headers in bytes(message.raw)


def test_the_helo_name_cannot_put_control_bytes_into_received(gateway: LiveGateway) -> None:
    """The client's EHLO name goes into our Received: header: a line break would
    start a header of its own; other control characters and bytes that are not
    UTF-8 do not belong in a header either. Each becomes "?"."""
    wire = gateway.wire()
    assert wire.command(b"EHLO bad\x00\x1b\xff\rname.example").startswith("250")
    assert wire.command("AUTH PLAIN " + b64(f"\0{VALID_INBOX}\0{VALID_KEY}")).startswith("235 ")
    assert wire.command(f"MAIL FROM:<{VALID_EMAIL}>") == "250 2.1.0 Sender OK"
    assert wire.command("RCPT TO:<a@example.com>") == "250 2.1.5 Recipient OK"
    wire.command("DATA")
    wire.sock.sendall(b"From: test@agentmail.dev\r\nSubject: helo\r\n\r\nbody\r\n.\r\n")
    assert wire.reply()[-1].startswith("250 2.0.0")
    assert bytes(Message.objects.get().raw).startswith(b"Received: from bad????name.example ([127.0.0.1])\r\n\tby ")


def folded(name: bytes, value: bytes) -> bytes:
    """A header line folded every 900 bytes, as body lines must stay under 1,000."""
    return name + b": " + b"\r\n ".join(value[i : i + 900] for i in range(0, len(value), 900))


@pytest.mark.parametrize(
    "name, value",
    [(b"Message-ID", b"<" + b"\\" * 80_000), (b"Subject", b"=?utf-8?q?abc?= " * 16_000)],
    ids=["message-id-backslashes", "subject-encoded-words"],
)
def test_a_crafted_header_costs_no_more_than_its_first_kilobytes(
    gateway: LiveGateway, name: bytes, value: bytes
) -> None:
    """The stdlib's Message-ID parser takes quadratic time: 80 KB of backslashes
    held the committer, and with it every message and record, for ~14 s (200 KB
    unfolded: 4 minutes); 256 KB of encoded words in a Subject, ~2.5 s. Only what
    is kept (the first 998 characters) is read now, and a Message-ID as text."""
    with gateway.smtp(timeout=2) as client:  # the 250 came later than that
        auth(client, "PLAIN", VALID_INBOX, VALID_KEY)
        content = b"From: test@agentmail.dev\r\n" + folded(name, value) + b"\r\n\r\nbody\r\n"
        assert client.sendmail(VALID_EMAIL, ["a@example.com"], content) == {}
    message = Message.objects.get()
    if name == b"Message-ID":
        assert message.message_id == folded(b"", value)[2:].replace(b"\r\n", b"").decode()[:998]
    else:
        assert message.subject.startswith("abcabcabc") and len(message.subject) <= 998


def test_over_long_body_line_is_refused_after_the_body(gateway: LiveGateway) -> None:
    wire = authenticated_wire(gateway)
    wire.command(f"MAIL FROM:<{VALID_EMAIL}>")
    wire.command("RCPT TO:<a@example.com>")
    assert wire.command("DATA").startswith("354 ")
    wire.sock.sendall(b"From: test@agentmail.dev\r\nSubject: long\r\n\r\n" + b"x" * 5000 + b"\r\nafter\r\n.\r\n")
    # Refused once the body has ended, not in the middle of it; the session goes on.
    assert wire.reply() == ["500 5.5.2 Line too long"]
    assert wire.command("NOOP") == "250 2.0.0 OK"
    assert not Message.objects.exists()


@pytest.mark.parametrize("size", [300 * 1024, 2 * 1024 * 1024], ids=["300KiB", "2MiB"])
def test_large_message_is_stored_byte_for_byte(gateway: LiveGateway, size: int) -> None:
    """Large messages take the store's no-copy path (zeroblob and blob I/O on
    SQLite, binary parameters on PostgreSQL): the bytes must come back exact."""
    lines = [f"{n:08d} ".encode() + bytes(range(33, 127)) * 10 for n in range(size // 950)]
    lines[3] = b"." + lines[3]  # stuffed by smtplib, unstuffed by the server
    body = (
        b"From: test@agentmail.dev\r\nSubject: large\r\nMessage-ID: <large@example.com>\r\n\r\n"
        + b"\r\n".join(lines)
        + b"\r\n"
    )
    with gateway.smtp() as client:
        auth(client, "PLAIN", VALID_INBOX, VALID_KEY)
        assert client.sendmail(VALID_EMAIL, ["a@example.com"], body) == {}
    message = Message.objects.get()
    raw = bytes(message.raw)
    assert raw.startswith(b"Received: from tester.example ")
    assert raw.endswith(b"\r\n\r\n" + body[body.index(b"\r\n\r\n") + 4 :])
    assert message.size == len(body) and message.subject == "large" and message.message_id == "<large@example.com>"


def test_raw_is_the_last_column_on_sqlite(transactional_db: None) -> None:
    """The large-message path relies on it (migration inboxes 0002): a later
    migration that rebuilds the table would move another column after it."""
    from django.db import connection

    if connection.vendor != "sqlite":
        pytest.skip("column order matters on SQLite only")
    with connection.cursor() as cursor:
        columns = [row[1] for row in cursor.execute("PRAGMA table_info(inboxes_message)").fetchall()]
    assert columns[-1] == "raw", columns


def test_bodies_in_memory_over_all_sessions_are_bounded(gateway_factory: Any, scenarios: None) -> None:
    """SMTP_MAX_BUFFERED_DATA: while one session holds 800 KB of an unfinished
    body, another's 400 KB body would pass the 1 MB limit. It is read to its end
    and answered 452 4.3.1 (try again later), not stored; once the first message
    is stored, the retry is accepted."""
    gateway = gateway_factory(max_buffered_data=1_000_000)
    budget = gateway.server.handler.body_budget
    line = b"x" * 998 + b"\r\n"

    def ready(wire: Any) -> None:
        assert wire.command(f"MAIL FROM:<{VALID_EMAIL}>") == "250 2.1.0 Sender OK"
        assert wire.command("RCPT TO:<a@example.com>") == "250 2.1.5 Recipient OK"
        assert wire.command("DATA").startswith("354 ")

    first, second = authenticated_wire(gateway), authenticated_wire(gateway)
    ready(first)
    first.sock.sendall(b"From: test@agentmail.dev\r\nSubject: first\r\n\r\n" + line * 800)
    eventually(lambda: budget.used >= 800 * 1000)
    ready(second)
    second.sock.sendall(b"From: test@agentmail.dev\r\nSubject: second\r\n\r\n" + line * 400 + b".\r\n")
    assert second.reply() == ["452 4.3.1 Insufficient system storage, try again later"]
    assert budget.used == 800 * 1000 + len(
        b"From: test@agentmail.dev\r\nSubject: first\r\n\r\n"
    )  # the refused body holds nothing
    first.sock.sendall(b".\r\n")
    assert first.reply()[-1].startswith("250 2.0.0")
    assert budget.used == 0
    ready(second)  # the same session, sent again
    second.sock.sendall(b"From: test@agentmail.dev\r\nSubject: second\r\n\r\n" + line * 400 + b".\r\n")
    assert second.reply()[-1].startswith("250 2.0.0")
    assert sorted(Message.objects.values_list("subject", flat=True)) == ["first", "second"]
    assert budget.used == 0
    gone = authenticated_wire(gateway)  # a client vanishing mid-body gives its share back
    ready(gone)
    gone.sock.sendall(line * 300)
    eventually(lambda: budget.used == 300 * 1000)
    gone.close()
    eventually(lambda: budget.used == 0)


def test_one_inbox_cannot_take_every_body_budget(
    gateway_factory: Any, scenarios: None, caplog: pytest.LogCaptureFixture
) -> None:
    """One inbox may hold a quarter of SMTP_MAX_BUFFERED_DATA (at least one
    message of the largest size): past its share its next body is answered 452
    4.3.1 while another inbox's body, which fits the whole budget, is taken."""
    other = Inbox.objects.create(
        inbox_id="inb_secondinbox0001",
        email="second@agentmail.dev",
        organization=Inbox.objects.get(inbox_id=VALID_INBOX).organization,
    )
    gateway = gateway_factory(max_buffered_data=4_000_000, max_message_size=1_000_000)
    budget = gateway.server.handler.body_budget
    assert (budget.limit, budget.share) == (4_000_000, 1_000_000)
    line = b"x" * 998 + b"\r\n"

    def ready(wire: Any, sender: str) -> None:
        assert wire.command(f"MAIL FROM:<{sender}>") == "250 2.1.0 Sender OK"
        assert wire.command("RCPT TO:<a@example.com>") == "250 2.1.5 Recipient OK"
        assert wire.command("DATA").startswith("354 ")

    holding = authenticated_wire(gateway)
    ready(holding, VALID_EMAIL)
    holding.sock.sendall(b"From: test@agentmail.dev\r\nSubject: held\r\n\r\n" + line * 800)
    eventually(lambda: budget.used >= 800 * 1000)
    same_inbox = authenticated_wire(gateway)
    ready(same_inbox, VALID_EMAIL)
    same_inbox.sock.sendall(b"From: test@agentmail.dev\r\nSubject: same inbox\r\n\r\n" + line * 400 + b".\r\n")
    assert same_inbox.reply() == ["452 4.3.1 Insufficient system storage, try again later"]
    assert "bodies in memory 800" in caplog.text and "this inbox's 800" in caplog.text
    other_inbox = gateway.wire()
    other_inbox.command("EHLO tester.example")
    assert other_inbox.command("AUTH PLAIN " + b64(f"\0{other.inbox_id}\0{VALID_KEY}")).startswith("235 ")
    ready(other_inbox, other.email)
    other_inbox.sock.sendall(b"From: second@agentmail.dev\r\nSubject: other inbox\r\n\r\n" + line * 400 + b".\r\n")
    assert other_inbox.reply()[-1].startswith("250 2.0.0")
    holding.sock.sendall(b".\r\n")
    assert holding.reply()[-1].startswith("250 2.0.0")
    assert budget.used == 0 and budget.held_by(None) == 0
    assert sorted(Message.objects.values_list("subject", flat=True)) == ["held", "other inbox"]
