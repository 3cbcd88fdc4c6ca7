"""What agents written for AgentMail's hosted SMTP rely on: the inbox's address as
the username, keys limited to chosen inboxes, checksummed keys, and the API key as
an OAuth bearer token (XOAUTH2, OAUTHBEARER), over a real socket."""

from __future__ import annotations

import base64
import io
import json
import smtplib
from collections.abc import Callable

import pytest
from django.core.management import CommandError, call_command

from apikeys.models import ApiKey
from inboxes.models import Inbox, Organization
from smtpgateway.models import AuthAttempt
from tests.helpers import (
    INVALID,
    OTHER_INBOX,
    SUCCESS,
    VALID_EMAIL,
    VALID_INBOX,
    VALID_KEY,
    LiveGateway,
    Wire,
    auth,
    b64,
)


def attempts() -> list[tuple[str, str, str, str | None]]:
    return [
        (a.mechanism, a.username, a.reason, a.inbox.inbox_id if a.inbox else None)
        for a in AuthAttempt.objects.select_related("inbox").order_by("id")
    ]


def test_the_address_finds_its_inbox_domain_without_case_local_part_as_stored(gateway: LiveGateway) -> None:
    for username in (VALID_EMAIL, "test@AgentMail.DEV", "TEST@agentmail.dev", "nobody@agentmail.dev"):
        with gateway.smtp() as client:
            auth(client, "PLAIN", username, VALID_KEY)
    gateway.settle()
    assert attempts() == [
        ("PLAIN", VALID_EMAIL, "OK", VALID_INBOX),
        ("PLAIN", "test@AgentMail.DEV", "OK", VALID_INBOX),  # kept as given, linked to the inbox found
        ("PLAIN", "TEST@agentmail.dev", "INBOX_NOT_FOUND", None),
        ("PLAIN", "nobody@agentmail.dev", "INBOX_NOT_FOUND", None),
    ]


def test_mail_after_auth_by_address(gateway: LiveGateway) -> None:
    with gateway.smtp() as client:
        client.login("test@AGENTMAIL.dev", VALID_KEY)
        refused = client.sendmail(VALID_EMAIL, ["a@example.com"], f"From: {VALID_EMAIL}\r\n\r\nhi\r\n".encode())
    assert refused == {}


def test_a_key_limited_to_inboxes(gateway: LiveGateway, extra_secrets: list[str]) -> None:
    out, err = io.StringIO(), io.StringIO()
    call_command("createapikey", "--org", "org_abc", "--inbox", OTHER_INBOX, stdout=out, stderr=err)
    key = out.getvalue().strip()
    extra_secrets.append(key)
    assert f"limited to {OTHER_INBOX}" in err.getvalue()
    assert list(ApiKey.objects.get(prefix=key[:10]).inboxes.values_list("inbox_id", flat=True)) == [OTHER_INBOX]
    for username in (OTHER_INBOX, "other@agentmail.dev", VALID_INBOX):
        with gateway.smtp() as client:
            code, reply = auth(client, "PLAIN", username, key)
        assert reply == (INVALID if username == VALID_INBOX else SUCCESS)
    gateway.settle()
    assert [reason for *_, reason, _ in attempts()] == ["OK", "OK", "INBOX_NOT_ALLOWED"]


def test_createapikey_refuses_inboxes_of_another_organization(db: None, scenarios: None) -> None:
    other = Organization.objects.get(public_id="org_xyz")
    Inbox.objects.create(inbox_id="inb_xyzinbox12345678", organization=other, email="x@xyz.example")
    with pytest.raises(CommandError, match="Not inboxes of org_abc: inb_xyzinbox12345678"):
        call_command("createapikey", "--org", "org_abc", "--inbox", "inb_xyzinbox12345678", stdout=io.StringIO())
    with pytest.raises(CommandError, match="No inbox inb_nosuchinbox0000"):
        call_command("createapikey", "--org", "org_abc", "--inbox", "inb_nosuchinbox0000", stdout=io.StringIO())
    assert not ApiKey.objects.filter(name="").exclude(prefix__startswith="am_").exists()


def test_new_keys_are_checksummed_and_a_bad_checksum_is_malformed(
    gateway: LiveGateway, extra_secrets: list[str]
) -> None:
    _, key = ApiKey.objects.create_key(organization=Organization.objects.get(public_id="org_abc"), scopes=["smtp:send"])
    typo = key[:-1] + ("a" if key[-1] != "a" else "b")
    extra_secrets.extend([key, typo])
    assert key.startswith("amk_")
    for password in (key, typo):
        with gateway.smtp() as client:
            auth(client, "PLAIN", VALID_INBOX, password)
    gateway.settle()
    rows = list(AuthAttempt.objects.order_by("id").values_list("reason", "key_prefix", "credential_failure"))
    assert rows == [("OK", key[:10], False), ("MALFORMED_KEY", "", True)]


# --- the API key as a bearer token ---------------------------------------------------------
def xoauth2(user: str, token: str) -> str:
    return f"user={user}\x01auth=Bearer {token}\x01\x01"


def oauthbearer(user: str, token: str) -> str:
    return f"n,a={user},\x01host=127.0.0.1\x01port=2525\x01auth=Bearer {token}\x01\x01"


BEARERS: dict[str, Callable[[str, str], str]] = {"XOAUTH2": xoauth2, "OAUTHBEARER": oauthbearer}
DUMMY = {"XOAUTH2": "", "OAUTHBEARER": "\x01"}
ERRORS = {"XOAUTH2": {"status": "401", "schemes": "bearer"}, "OAUTHBEARER": {"status": "invalid_token"}}


def smtplib_bearer(client: smtplib.SMTP, mechanism: str, user: str, token: str, initial: bool) -> int:
    """smtplib with a custom mechanism: the response first, then the dummy for an error."""
    challenges: list[bytes] = []

    def respond(challenge: bytes | None = None) -> str:
        if challenge is None:
            return BEARERS[mechanism](user, token)
        challenges.append(challenge)
        return BEARERS[mechanism](user, token) if challenge == b"" else DUMMY[mechanism]

    try:
        code = client.auth(mechanism, respond, initial_response_ok=initial)[0]
    except smtplib.SMTPAuthenticationError as error:
        code = error.smtp_code
    errors = [json.loads(challenge) for challenge in challenges if challenge]
    assert all(error.items() >= ERRORS[mechanism].items() for error in errors), errors
    return code


@pytest.mark.parametrize("initial", [True, False], ids=["initial-response", "challenge"])
@pytest.mark.parametrize("mechanism", ["XOAUTH2", "OAUTHBEARER"])
def test_bearer_mechanisms_with_smtplib(gateway: LiveGateway, mechanism: str, initial: bool) -> None:
    cases = [
        (VALID_INBOX, VALID_KEY, 235, "OK"),
        (VALID_EMAIL, VALID_KEY, 235, "OK"),
        (VALID_INBOX, "am_doesnotexist0123456789012345678901", 535, "API_KEY_NOT_FOUND"),
        (VALID_INBOX, "am_noscope12345678901234567890123456", 535, "INSUFFICIENT_PERMISSIONS"),
    ]
    for user, token, code, _ in cases:
        with gateway.smtp() as client:
            assert smtplib_bearer(client, mechanism, user, token, initial) == code
    gateway.settle()
    assert attempts() == [(mechanism, user, reason, VALID_INBOX) for user, _, _, reason in cases]


@pytest.mark.parametrize("mechanism", ["XOAUTH2", "OAUTHBEARER"])
def test_a_refused_token_follows_the_mechanisms_error_flow(gateway: LiveGateway, mechanism: str) -> None:
    wire = gateway.wire()
    wire.command("EHLO tester.example")
    error = wire.command(
        f"AUTH {mechanism} " + b64(BEARERS[mechanism](VALID_INBOX, "am_revoked78901234567890123456789012"))
    )
    assert error.startswith("334 ")
    assert json.loads(base64.b64decode(error[4:])).items() >= ERRORS[mechanism].items()
    assert wire.command(b64(DUMMY[mechanism]) if DUMMY[mechanism] else "") == INVALID
    # The session goes on, and the right key then works.
    assert wire.command(f"AUTH {mechanism} " + b64(BEARERS[mechanism](VALID_INBOX, VALID_KEY))) == SUCCESS


@pytest.mark.parametrize(
    ("mechanism", "response", "reply"),
    [
        ("XOAUTH2", "user=inb_valid1234567890\x01\x01", "501 5.5.2 Can't read the XOAUTH2 response"),
        ("XOAUTH2", "auth=Bearer k\x01\x01", "501 5.5.2 Can't read the XOAUTH2 response"),
        ("XOAUTH2", "user=x\x01auth=Basic abc\x01\x01", "501 5.5.2 Can't read the XOAUTH2 response"),
        ("OAUTHBEARER", "p=tls-unique,a=x,\x01auth=Bearer k\x01\x01", "501 5.5.4 Channel binding is not supported"),
        ("OAUTHBEARER", "n,a=x\x01auth=Bearer k\x01\x01", "501 5.5.2 Can't read the OAUTHBEARER response"),
        ("OAUTHBEARER", "n,a=x,\x01host=h\x01\x01", "501 5.5.2 Can't read the OAUTHBEARER response"),
    ],
)
def test_malformed_bearer_responses(gateway: LiveGateway, mechanism: str, response: str, reply: str) -> None:
    wire = gateway.wire()
    wire.command("EHLO tester.example")
    assert wire.command(f"AUTH {mechanism} {b64(response)}") == reply
    assert wire.command("NOOP") == "250 2.0.0 OK"
    gateway.settle()
    assert [(m, reason) for m, _, reason, _ in attempts()] == [(mechanism, "MALFORMED")]


def test_oauthbearer_without_authzid_and_with_escaped_names(gateway: LiveGateway) -> None:
    wire = gateway.wire()
    wire.command("EHLO tester.example")
    no_user = b64(f"n,,\x01auth=Bearer {VALID_KEY}\x01\x01")
    assert wire.command(f"AUTH OAUTHBEARER {no_user}").startswith("334 ")
    assert wire.command(b64("\x01")) == INVALID
    escaped = b64(f"y,a=a=2Cb=3Dc@agentmail.dev,\x01auth=bearer {VALID_KEY}\x01\x01")
    assert wire.command(f"AUTH OAUTHBEARER {escaped}").startswith("334 ")
    gateway.settle()
    assert [(user, reason) for _, user, reason, _ in attempts()] == [
        ("", "INVALID_INBOX_FORMAT"),
        ("a,b=c@agentmail.dev", "INBOX_NOT_FOUND"),
    ]


def test_a_bearer_token_needs_tls_like_any_key(gateway_factory: Callable[..., LiveGateway], scenarios: None) -> None:
    gateway = gateway_factory(auth_require_tls=True)
    wire = Wire(gateway.port)
    wire.command("EHLO tester.example")
    assert (
        wire.command("AUTH XOAUTH2 " + b64(xoauth2(VALID_INBOX, VALID_KEY)))
        == "538 5.7.11 Encryption required for requested authentication mechanism"
    )
