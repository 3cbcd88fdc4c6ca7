"""Reply texts: EHLO's extensions, and an enhanced status code on every reply."""

from __future__ import annotations

import re

import pytest

from smtpgateway.session.replies import with_enhanced_code
from tests.helpers import VALID_EMAIL, VALID_INBOX, VALID_KEY, LiveGateway, b64

ENHANCED = re.compile(r"^[245]\d\d [245]\.\d{1,3}\.\d{1,3} \S")


def test_ehlo_advertises_the_extensions(gateway: LiveGateway) -> None:
    wire = gateway.wire()
    assert re.fullmatch(r"220 \S+ ESMTP agentmail-smtp ready", wire.greeting[0])
    wire.send("EHLO tester.example")
    lines = wire.reply()
    assert [line[4:] for line in lines[1:]] == [
        "SIZE 10485760",
        "8BITMIME",
        "SMTPUTF8",
        "PIPELINING",
        "AUTH PLAIN LOGIN XOAUTH2 OAUTHBEARER",
        "ENHANCEDSTATUSCODES",
    ]
    assert all(line.startswith("250-") for line in lines[:-1]) and lines[-1].startswith("250 ")


def test_every_reply_of_a_varied_session_has_an_enhanced_code(gateway_factory, scenarios) -> None:  # type: ignore[no-untyped-def]
    """Commands that make aiosmtpd answer with its own texts, in and out of order."""
    wire = gateway_factory(max_unauth_commands=0).wire()  # 0: no limit, for this long session
    commands = [
        "HELO",
        "EHLO",
        "MAIL FROM:<x@y>",
        "EHLO tester.example",
        "NOOP",
        "HELP",
        "HELP MAIL",
        "HELP NOSUCH",
        "VRFY someone@example.com",
        "VRFY",
        "EXPN list",
        "FOO bar",
        "STARTTLS",
        "QUIT now",
        "RSET x",
        "DATA",
        "RCPT TO:<a@example.com>",
        "AUTH PLAIN " + b64(f"\0{VALID_INBOX}\0{VALID_KEY}"),
        "RCPT TO:<a@example.com>",
        "DATA",
        "MAIL FROM:<not an address",
        f"MAIL FROM:<{VALID_EMAIL}> FOO=BAR",
        f"MAIL FROM:<{VALID_EMAIL}> BODY=9BIT",
        f"MAIL FROM:<{VALID_EMAIL}>",
        f"MAIL FROM:<{VALID_EMAIL}>",
        "RCPT TO:<a@example.com> NOTIFY=NEVER",
        "RCPT TO:",
        "DATA x",
        "X" * 600,
        "MAIL " + "Y" * 700,
        "NOOP",
    ]
    seen = []
    for command in commands:
        reply = wire.command(command)
        seen.append(reply)
        if command.startswith("EHLO ") and reply.startswith("250 "):
            continue  # EHLO lines carry extension keywords (RFC 2034 exempts them)
        assert ENHANCED.match(reply), f"{command[:30]!r} -> {reply!r}"
    assert "250 2.0.0 OK" in seen and "221" not in " ".join(seen)


def test_quit(gateway: LiveGateway) -> None:
    wire = gateway.wire()
    assert wire.command("QUIT") == "221 2.0.0 Bye"
    assert wire.closed_by_server()


@pytest.mark.parametrize(
    ("aiosmtpd_text", "ours"),
    [
        ("250 OK", "250 2.0.0 OK"),
        ("552 Error: Too much mail data", "552 5.2.3 Message too large"),
        ("503 Error: need RCPT command", "503 5.5.1 Error: need RCPT command"),
        ('500 Error: command "FOO" not recognized', '500 5.5.2 Error: command "FOO" not recognized'),
        ("502 5.5.1 Too many unrecognized commands, goodbye.", "502 5.5.1 Too many unrecognized commands, goodbye."),
        ("220 host.example ESMTP ready", "220 host.example ESMTP ready"),  # greeting: exempt
        ("354 End data with <CR><LF>.<CR><LF>", "354 End data with <CR><LF>.<CR><LF>"),  # intermediate
        ("299 Odd", "299 2.0.0 Odd"),
        ("250 Supported commands: DATA NOOP", "214 2.0.0 Supported commands: DATA NOOP"),  # HELP
    ],
)
def test_catalogue_rewrites(aiosmtpd_text: str, ours: str) -> None:
    assert with_enhanced_code(aiosmtpd_text) == ours


def test_help_answers_214(gateway: LiveGateway) -> None:
    """RFC 5321 4.3.2: HELP succeeds with 211 or 214 (aiosmtpd said 250)."""
    wire = gateway.wire()
    wire.command("EHLO tester.example")
    assert re.fullmatch(r"214 2\.0\.0 Supported commands: AUTH DATA EHLO .*QUIT RCPT RSET .*VRFY", wire.command("HELP"))
    assert wire.command("HELP mail") == "214 2.0.0 Syntax: MAIL FROM: <address> [SP <mail-parameters>]"
    assert wire.command("HELP NOSUCH").startswith("501 5.5.4 Supported commands: ")


@pytest.mark.parametrize("command", ["HELO", "EHLO"])
def test_greeting_without_a_hostname(gateway: LiveGateway, command: str) -> None:
    wire = gateway.wire()
    assert wire.command(command) == f"501 5.5.4 Syntax: {command} hostname"
    assert wire.command("AUTH PLAIN") == "503 5.5.1 Error: send EHLO first"  # the refused greeting did not count


@pytest.mark.parametrize("argument", [b"someone\rEHLO x", b"caf\xe9", b"<caf\xe9@example.com>", b"<a\rb@example.com>"])
def test_vrfy_does_not_echo_what_is_no_address(gateway: LiveGateway, argument: bytes) -> None:
    """aiosmtpd answered "502 Could not VRFY <argument>": a bare CR in it broke the
    reply line, and bytes that are not UTF-8 made the reply itself fail (451)."""
    wire = gateway.wire()
    assert wire.command(b"VRFY " + argument) == "502 5.1.3 Could not VRFY: not an address"
    assert (
        wire.command("VRFY someone@example.com")
        == "252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery"
    )
    assert wire.command("VRFY") == "501 5.5.4 Syntax: VRFY <address>"
    assert wire.command("NOOP") == "250 2.0.0 OK"
