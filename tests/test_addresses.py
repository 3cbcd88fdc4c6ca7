"""MAIL/RCPT addresses: the regular-expression path gives what the stdlib parser
(aiosmtpd's, ``parse_path_by_stdlib``) gives, for every input; a live session
stores what was sent; input the parser fails on is a syntax error."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inboxes.models import Message
from smtpgateway.addresses import parse_path, parse_path_by_stdlib
from tests.helpers import VALID_EMAIL, LiveGateway, authenticated_wire


EXAMPLES = [
    "<a@example.com>",
    "<first.last+tag@mail.example.co.uk>",
    "<a@example.com> SIZE=1000 BODY=8BITMIME",
    "<a@example.com>\tSIZE=1000",
    "<a@example.com>   (a comment) SIZE=1",
    "<a@example.com>(comment)",
    "<a@example.com>x",
    "a@[",
    "\"",
    "<o'brien!#$%&*/=?^_`{|}~-@example.com>",
    '<"quoted local"@example.com>',
    '<"a\\"b"@example.com>',
    "<a@[192.0.2.1]>",
    "<a..b@example.com>",
    "<.a@example.com>",
    "<a.@example.com>",
    "<a@example..com>",
    "<a@-example.com>",
    "<josé@exämple.com>",
    "<>",
    "<a@example.com",
    "a@example.com",
    "a@example.com SIZE=5",
    " <a@example.com>",
    "<(comment)a@example.com>",
    "<@route.example:a@example.com>",
    "<a b@example.com>",
    "<a@b@example.com>",
    "<a@>",
    "<@example.com>",
    "",
    "<",
    ">",
]


@pytest.mark.parametrize("arg", EXAMPLES)
def test_same_as_the_parser(arg: str) -> None:
    assert parse_path(arg) == parse_path_by_stdlib(arg)


def test_the_common_form_is_the_text_between_the_brackets() -> None:
    assert parse_path("<first.last+tag@example.com> SIZE=10") == ("first.last+tag@example.com", "SIZE=10")
    assert parse_path("<a@example.com>") == ("a@example.com", "")


# Built from the characters that matter to the grammar, so that most examples are
# near misses of the common form rather than noise.
fragments = st.sampled_from(
    ["<", ">", "@", ".", " ", "\t", "(", ")", '"', "\\", "[", "]", ":", ",", ";", "a", "b", "z9", "+", "-", "'", "é", "SIZE=1", "example.com", "x.y"]
)


@settings(max_examples=3000, deadline=None)
@given(parts=st.lists(fragments, max_size=14))
def test_same_as_the_parser_on_generated_input(parts: list[str]) -> None:
    arg = "".join(parts)
    assert parse_path(arg) == parse_path_by_stdlib(arg)


@settings(max_examples=1500, deadline=None)
@given(local=st.from_regex(r"[A-Za-z0-9.+_'=-]{1,20}", fullmatch=True), domain=st.from_regex(r"[a-z0-9.-]{1,20}", fullmatch=True), rest=st.sampled_from(["", " SIZE=10", "  BODY=8BITMIME", "(c)", " (c) X"]))
def test_same_as_the_parser_on_address_shaped_input(local: str, domain: str, rest: str) -> None:
    arg = f"<{local}@{domain}>{rest}"
    assert parse_path(arg) == parse_path_by_stdlib(arg)


def test_a_live_session_stores_the_addresses_as_sent(gateway: LiveGateway) -> None:
    wire = authenticated_wire(gateway)
    assert wire.command(f"MAIL FROM:<{VALID_EMAIL}> SIZE=100") == "250 2.1.0 Sender OK"
    for recipient in ("<first.last+tag@example.com>", '<"two words"@example.com>', "<a@[192.0.2.1]>"):
        assert wire.command(f"RCPT TO:{recipient}") == "250 2.1.5 Recipient OK"
    wire.command("DATA")
    wire.sock.sendall(b"Subject: addresses\r\n\r\nbody\r\n.\r\n")
    assert wire.reply()[-1].startswith("250 2.0.0")
    message = Message.objects.get()
    assert message.envelope_from == VALID_EMAIL
    assert message.envelope_to == ["first.last+tag@example.com", '"two words"@example.com', "a@[192.0.2.1]"]


@pytest.mark.parametrize("truncated", ["<", "<a@", "<@", "< ", '<"', "a@["])
def test_an_address_cut_short_is_a_syntax_error(gateway: LiveGateway, truncated: str) -> None:
    """The stdlib parser raises IndexError or AttributeError on these; they used to
    reach the client as 451 internal error, with a traceback in the log."""
    wire = authenticated_wire(gateway)
    assert wire.command(f"MAIL FROM:{truncated}") == "553 5.1.3 Error: malformed address"
    assert wire.command(f"MAIL FROM:<{VALID_EMAIL}>") == "250 2.1.0 Sender OK"
    assert wire.command(f"RCPT TO:{truncated}") == "553 5.1.3 Error: malformed address"
    assert wire.command("NOOP") == "250 2.0.0 OK"


@pytest.mark.parametrize("recipient", ["<postmaster>", "<someone>", '<"x"'])
def test_a_recipient_without_a_domain_is_refused(gateway: LiveGateway, recipient: str) -> None:
    wire = authenticated_wire(gateway)
    assert wire.command(f"MAIL FROM:<{VALID_EMAIL}>") == "250 2.1.0 Sender OK"
    assert wire.command(f"RCPT TO:{recipient}") == "553 5.1.3 Recipient address must name a domain"
    assert wire.command("RCPT TO:<a@example.com>") == "250 2.1.5 Recipient OK"


@pytest.mark.parametrize(
    "address",
    [b"<a\x00b@example.com>", b'<"a\x00b"@example.com>', b"<ab@exa\x01mple.com>", b"<ab@[192.0.2.1\x00]>", b"<a\x7fb@example.com>",
     b"<caf\xe9@example.com>", b"<ab@\xff.example.com>"],
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
