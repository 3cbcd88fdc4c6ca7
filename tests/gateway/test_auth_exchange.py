"""AUTH exchanges beyond the happy path, on the raw wire: every one is answered
with an enhanced code and recorded, and none leaves the session unusable."""

from __future__ import annotations

import time

import pytest

from smtpgateway.models import AuthAttempt
from tests.helpers import VALID_INBOX, VALID_KEY, GatewayFactory, LiveGateway, Wire, b64


def ehlo(gateway: LiveGateway) -> Wire:
    wire = gateway.wire()
    assert wire.command("EHLO tester.example").startswith("250 ")
    return wire


def test_plain_without_initial_response_gets_empty_challenge(gateway: LiveGateway) -> None:
    wire = ehlo(gateway)
    assert wire.command("AUTH PLAIN") == "334 "
    assert wire.command(b64(f"\0{VALID_INBOX}\0{VALID_KEY}")) == "235 2.7.0 Authentication successful"
    gateway.settle()
    assert AuthAttempt.objects.get().reason == "OK"


def test_login_without_initial_response(gateway: LiveGateway) -> None:
    wire = ehlo(gateway)
    assert wire.command("AUTH LOGIN") == "334 " + b64("Username:")
    assert wire.command(b64(VALID_INBOX)) == "334 " + b64("Password:")
    assert wire.command(b64(VALID_KEY)) == "235 2.7.0 Authentication successful"
    gateway.settle()
    attempt = AuthAttempt.objects.get()
    assert (attempt.mechanism, attempt.reason, attempt.username) == ("LOGIN", "OK", VALID_INBOX)


def test_mechanism_name_is_case_insensitive(gateway: LiveGateway) -> None:
    wire = ehlo(gateway)
    assert wire.command("auth plain " + b64(f"\0{VALID_INBOX}\0{VALID_KEY}")).startswith("235 2.7.0")


@pytest.mark.parametrize(
    ("exchange", "reply"),
    [
        (["AUTH PLAIN !!!notbase64"], "501 5.5.2 Can't decode base64"),
        (["AUTH PLAIN", "***"], "501 5.5.2 Can't decode base64"),
        (["AUTH PLAIN " + b64("no-nul-separators")], "501 5.5.2 Can't split auth value"),
        (["AUTH LOGIN", b64(VALID_INBOX), "%%%"], "501 5.5.2 Can't decode base64"),
    ],
    ids=["initial", "challenge", "split", "login-password"],
)
def test_malformed_payload_is_recorded(gateway: LiveGateway, exchange: list[str], reply: str) -> None:
    wire = ehlo(gateway)
    for line in exchange[:-1]:
        assert wire.command(line).startswith("334 ")
    assert wire.command(exchange[-1]) == reply
    gateway.settle()
    attempt = AuthAttempt.objects.get()
    assert (attempt.success, attempt.reason) == (False, "MALFORMED")
    # The session goes on: a correct AUTH now works.
    assert wire.command("AUTH PLAIN " + b64(f"\0{VALID_INBOX}\0{VALID_KEY}")).startswith("235 2.7.0")


def test_plain_authzid_other_than_the_inbox_is_refused(gateway: LiveGateway) -> None:
    """RFC 4616 section 2: a PLAIN authzid asks to act as someone else. With
    valid credentials for one inbox, acting as another is refused with the same
    reply as any failure, before the credentials are looked at."""
    with gateway.smtp() as client:
        client.ehlo("tester.example")
        assert client.docmd("AUTH", "PLAIN " + b64(f"inb_other12345678901\0{VALID_INBOX}\0{VALID_KEY}")) == (
            535,
            b"5.7.8 Authentication credentials invalid",
        )
        # Naming oneself as the authzid is the same as naming nobody.
        assert client.docmd("AUTH", "PLAIN " + b64(f"{VALID_INBOX}\0{VALID_INBOX}\0{VALID_KEY}"))[0] == 235
    gateway.settle()
    refused, accepted = AuthAttempt.objects.order_by("created_at", "id")
    assert (refused.success, refused.reason, refused.username, refused.credential_failure) == (
        False,
        "AUTHZID_MISMATCH",
        VALID_INBOX,
        False,
    )
    assert (accepted.success, accepted.reason) == (True, "OK")


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_client_abort_is_recorded(gateway: LiveGateway, mechanism: str) -> None:
    wire = ehlo(gateway)
    assert wire.command(f"AUTH {mechanism}").startswith("334")
    assert wire.command("*") == "501 5.7.0 Auth aborted"
    gateway.settle()
    attempt = AuthAttempt.objects.get()
    assert (attempt.success, attempt.reason, attempt.mechanism) == (False, "ABORTED", mechanism)
    assert wire.command("NOOP") == "250 2.0.0 OK"


def test_login_abort_at_password_keeps_username(gateway: LiveGateway) -> None:
    wire = ehlo(gateway)
    wire.command("AUTH LOGIN " + b64(VALID_INBOX))
    assert wire.command("*") == "501 5.7.0 Auth aborted"
    gateway.settle()
    assert AuthAttempt.objects.get().username == VALID_INBOX


def test_unsupported_mechanism(gateway: LiveGateway) -> None:
    wire = ehlo(gateway)
    assert wire.command("AUTH CRAM-MD5") == "504 5.5.4 Unrecognized authentication type"
    gateway.settle()
    attempt = AuthAttempt.objects.get()
    assert (attempt.reason, attempt.mechanism) == ("UNSUPPORTED_MECHANISM", "CRAM-MD5")


@pytest.mark.parametrize(
    ("sent", "stored"),
    [(b"X\x00Y", "X\\x00Y"), (b"\xff\xfe", "\\xff\\xfe"), (b"PLAIN\x1b", "PLAIN\\x1b"), (b"M" * 40, "M" * 32)],
    ids=["nul", "invalid-utf8", "escape", "long"],
)
def test_hostile_mechanism_names_are_stored_safely(gateway: LiveGateway, sent: bytes, stored: str) -> None:
    """The name of an unsupported mechanism is recorded as sent, made printable:
    a NUL (PostgreSQL refuses it) or undecodable bytes (no driver encodes them)
    once made the database refuse the record, and with it the rest of its batch.
    (The session cuts the name to the column's 32 characters first.)"""
    wire = ehlo(gateway)
    assert wire.command(b"AUTH " + sent) == "504 5.5.4 Unrecognized authentication type"
    assert wire.command("NOOP") == "250 2.0.0 OK"
    gateway.settle()
    attempt = AuthAttempt.objects.get()
    assert (attempt.reason, attempt.mechanism) == ("UNSUPPORTED_MECHANISM", stored)


@pytest.mark.parametrize(
    ("before", "command", "reply"),
    [
        ([], "AUTH", "501 5.5.4 Syntax: AUTH mechanism [initial-response]"),
        ([], "AUTH PLAIN a b", "501 5.5.4 Syntax: AUTH mechanism [initial-response]"),
        (["AUTH PLAIN " + b64(f"\0{VALID_INBOX}\0{VALID_KEY}")], "AUTH PLAIN", "503 5.5.1 Already authenticated"),
    ],
    ids=["no-mechanism", "too-many-args", "twice"],
)
def test_auth_sequencing_errors(gateway: LiveGateway, before: list[str], command: str, reply: str) -> None:
    wire = ehlo(gateway)
    for line in before:
        wire.command(line)
    assert wire.command(command) == reply


def test_auth_needs_ehlo(gateway: LiveGateway) -> None:
    wire = gateway.wire()
    assert wire.command("AUTH PLAIN " + b64(f"\0{VALID_INBOX}\0{VALID_KEY}")) == "503 5.5.1 Error: send EHLO first"
    assert wire.command("HELO old.example").startswith("250 ")
    assert wire.command("AUTH PLAIN " + b64(f"\0{VALID_INBOX}\0{VALID_KEY}")) == "503 5.5.1 Error: send EHLO first"
    gateway.settle()
    assert not AuthAttempt.objects.exists()


def test_hostile_username_bytes_are_stored_safely(gateway: LiveGateway) -> None:
    """NUL, invalid UTF-8 and control characters in a LOGIN username."""
    wire = ehlo(gateway)
    hostile = b"inb_\x00\xff\xfe\r\x1b[31mred" + b"x" * 300
    wire.command("AUTH LOGIN " + b64(hostile))
    assert wire.command(b64(VALID_KEY)) == "535 5.7.8 Authentication credentials invalid"
    gateway.settle()
    attempt = AuthAttempt.objects.get()
    assert attempt.reason == "INVALID_INBOX_FORMAT"
    assert attempt.username.startswith("inb_\\x00\\xff\\xfe\\x0d\\x1b[31mred")
    assert len(attempt.username) == 128 and attempt.username.endswith("…")
    assert "\x00" not in attempt.username


def test_key_pasted_as_username_is_withheld(gateway: LiveGateway) -> None:
    wire = ehlo(gateway)
    assert (
        wire.command("AUTH PLAIN " + b64(f"\0{VALID_KEY}\0{VALID_KEY}"))
        == "535 5.7.8 Authentication credentials invalid"
    )
    gateway.settle()
    attempt = AuthAttempt.objects.get()
    assert attempt.reason == "INVALID_INBOX_FORMAT"
    assert attempt.username == "am_validke… (withheld: looks like an API key)"


def test_auth_lines_may_be_12288_octets_and_no_more(gateway_factory: GatewayFactory, scenarios: None) -> None:
    """RFC 4954 section 4: the command and the responses alike, CRLF included.
    A 3,000-character username is then an ordinary failure, recorded."""
    gateway = gateway_factory(auth_max_failures=0, auth_failure_delay=0)
    wire = ehlo(gateway)
    long_user = "u" * 3000
    assert wire.command("AUTH PLAIN " + b64(f"\0{long_user}\0{VALID_KEY}")) == (
        "535 5.7.8 Authentication credentials invalid"
    )
    most = "AUTH PLAIN " + "A" * 12_272 + "   "  # 12,288 octets with the CRLF (spaces are ignored)
    assert len(most) + 2 == 12_288
    assert wire.command(most) == "501 5.5.2 Can't split auth value"  # read whole, then judged
    assert wire.command(most + " ") == "500 5.5.6 Authentication Exchange line is too long"
    assert wire.command("AUTH PLAIN") == "334 "
    assert wire.command("A" * 12_287) == "500 5.5.6 Authentication Exchange line is too long"
    assert wire.command("AUTH LOGIN") == "334 " + b64("Username:")
    assert wire.command("A" * 50_000) == "500 5.5.6 Authentication Exchange line is too long"
    assert wire.command("NOOP") == "250 2.0.0 OK"  # the session goes on
    assert wire.command("NOOP " + "x" * 2000) == "500 5.5.2 Line too long"  # other commands: 512
    gateway.settle()
    attempts = list(AuthAttempt.objects.order_by("id").values_list("reason", "username"))
    assert [reason for reason, _ in attempts] == ["INVALID_INBOX_FORMAT", *["MALFORMED"] * 4]
    assert attempts[0][1].startswith("uuuu")  # as given, truncated for the column


def test_client_vanishing_mid_auth_is_recorded(gateway: LiveGateway) -> None:
    wire = ehlo(gateway)
    wire.command("AUTH LOGIN")
    wire.close()
    # The record is written by a committer thread after the session is gone.
    for _ in range(100):
        if AuthAttempt.objects.exists():
            break
        time.sleep(0.02)
    gateway.settle()
    assert AuthAttempt.objects.get().reason == "ABORTED"
    # And the gateway still serves everyone else.
    assert ehlo(gateway).command("NOOP") == "250 2.0.0 OK"
