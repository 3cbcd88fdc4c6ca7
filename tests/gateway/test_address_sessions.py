"""MAIL/RCPT addresses in live sessions: stored as sent, and every malformed or
crafted one refused with 553 5.1.3 or 555 5.5.4 while the session goes on."""

from __future__ import annotations

import pytest

from inboxes.models import Message
from tests.helpers import VALID_EMAIL, LiveGateway, authenticated_wire


def test_a_live_session_stores_the_addresses_as_sent(gateway: LiveGateway) -> None:
    wire = authenticated_wire(gateway)
    assert wire.command(f"MAIL FROM:<{VALID_EMAIL}> SIZE=100") == "250 2.1.0 Sender OK"
    recipients = (
        "<first.last+tag@example.com>",
        '<"two words"@example.com>',
        "<a@[192.0.2.1]>",
        '<"quoted"@example.com>',
        "<@relay.example:r@example.com>",
    )
    for recipient in recipients:
        assert wire.command(f"RCPT TO:{recipient}") == "250 2.1.5 Recipient OK"
    wire.command("DATA")
    wire.sock.sendall(b"From: test@agentmail.dev\r\nSubject: addresses\r\n\r\nbody\r\n.\r\n")
    assert wire.reply()[-1].startswith("250 2.0.0")
    message = Message.objects.get()
    assert message.envelope_from == VALID_EMAIL
    assert message.envelope_to == [
        "first.last+tag@example.com",
        '"two words"@example.com',
        "a@[192.0.2.1]",
        "quoted@example.com",
        "r@example.com",
    ]


@pytest.mark.parametrize("truncated", ["<", "<a@", "<@", "< ", '<"', '<"x', "a@["])
def test_an_address_cut_short_is_a_syntax_error(gateway: LiveGateway, truncated: str) -> None:
    """The stdlib parser raises IndexError or AttributeError on these; they used to
    reach the client as 451 internal error, with a traceback in the log."""
    wire = authenticated_wire(gateway)
    assert wire.command(f"MAIL FROM:{truncated}") == "553 5.1.3 Error: malformed address"
    assert wire.command(f"MAIL FROM:<{VALID_EMAIL}>") == "250 2.1.0 Sender OK"
    assert wire.command(f"RCPT TO:{truncated}") == "553 5.1.3 Error: malformed address"
    assert wire.command("NOOP") == "250 2.0.0 OK"


@pytest.mark.parametrize("recipient", ["<postmaster>", "<someone>", "someone"])
def test_a_recipient_without_a_domain_is_refused(gateway: LiveGateway, recipient: str) -> None:
    wire = authenticated_wire(gateway)
    assert wire.command(f"MAIL FROM:<{VALID_EMAIL}>") == "250 2.1.0 Sender OK"
    assert wire.command(f"RCPT TO:{recipient}") == "553 5.1.3 Recipient address must name a domain"
    assert wire.command("RCPT TO:<a@example.com>") == "250 2.1.5 Recipient OK"


@pytest.mark.parametrize(
    "address",
    [
        b"<a\x00b@example.com>",
        b'<"a\x00b"@example.com>',
        b"<ab@exa\x01mple.com>",
        b"<ab@[192.0.2.1\x00]>",
        b"<a\x7fb@example.com>",
        b"<caf\xe9@example.com>",
        b"<ab@\xff.example.com>",
    ],
)
def test_an_address_with_a_control_character_or_not_utf8_is_malformed(gateway: LiveGateway, address: bytes) -> None:
    """The stdlib parser accepts these (as defects). RFC 5321 allows no control
    character in a mailbox, RFC 6531 no bytes that are not UTF-8; PostgreSQL
    refused to store either, and the message got 451 on every retry."""
    wire = authenticated_wire(gateway)
    sender = address.replace(b"example.com", VALID_EMAIL.split("@")[1].encode())
    assert wire.command(b"MAIL FROM:" + sender) == "553 5.1.3 Error: malformed address"
    assert wire.command(f"MAIL FROM:<{VALID_EMAIL}> SMTPUTF8") == "250 2.1.0 Sender OK"
    assert wire.command(b"RCPT TO:" + address) == "553 5.1.3 Error: malformed address"
    assert wire.command("RCPT TO:<a@example.com>") == "250 2.1.5 Recipient OK"


# Each took the stdlib parser 1.0 to 4.3 ms of the event loop (bench/addresses.py).
CRAFTED = [
    "<" + "(a)" * 160 + "a@example.com>",
    "<" + "a " * 240 + "@example.com>",
    "<" + "@a," * 160 + ":a@b",
    "a" + " a" * 240,
]


@pytest.mark.parametrize("crafted", CRAFTED, ids=["comments", "spaces", "route", "words"])
def test_a_crafted_path_is_refused_and_the_session_goes_on(gateway: LiveGateway, crafted: str) -> None:
    wire = authenticated_wire(gateway)
    # Malformed (553 5.1.3), or a path followed by what are no parameters (555 5.5.4).
    assert wire.command(f"MAIL FROM:{crafted}")[:9] in ("553 5.1.3", "555 5.5.4")
    assert wire.command(f"MAIL FROM:<{VALID_EMAIL}>") == "250 2.1.0 Sender OK"
    assert wire.command(f"RCPT TO:{crafted}")[:9] in ("553 5.1.3", "555 5.5.4")
    assert wire.command("RCPT TO:<a@example.com>") == "250 2.1.5 Recipient OK"
