"""smtpgateway.auth.rules.validate: the nine checks in their order, without a database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from apikeys.keys import digest_key, generate_key
from smtpgateway.auth.rules import InboxFacts, KeyFacts, validate
from smtpgateway.reasons import Reason

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
INBOX = "inb_valid1234567890"
KEY = "am_" + "k" * 40
CHECKSUMMED = generate_key()
GOOD_KEY = KeyFacts(id=1, organization_id=10, revoked=False, expires_at=None, scopes=("smtp:send",))
GOOD_INBOX = InboxFacts(id=2, inbox_id=INBOX, organization_id=10, status="active", email="a@b.c")


def lookup_of(key: KeyFacts | None, inbox: InboxFacts | None):  # type: ignore[no-untyped-def]
    calls: list[tuple[str, str]] = []

    def lookup(inbox_id: str, digest: str) -> tuple[KeyFacts | None, InboxFacts | None]:
        calls.append((inbox_id, digest))
        return key, inbox

    return lookup, calls


def run(
    username: str = INBOX, password: str = KEY, key: KeyFacts | None = GOOD_KEY, inbox: InboxFacts | None = GOOD_INBOX
) -> Reason:
    lookup, _ = lookup_of(key, inbox)
    return validate(username, password, lookup, NOW).reason


def test_success() -> None:
    lookup, calls = lookup_of(GOOD_KEY, GOOD_INBOX)
    outcome = validate(INBOX, KEY, lookup, NOW)
    assert outcome.success and outcome.key == GOOD_KEY and outcome.inbox == GOOD_INBOX
    assert calls == [(INBOX, digest_key(KEY))]  # looked up by digest, never by plaintext


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"username": "invalid_inbox"}, Reason.INVALID_INBOX_FORMAT),
        ({"username": "inb_short"}, Reason.INVALID_INBOX_FORMAT),
        ({"username": "inb_" + "a" * 33}, Reason.INVALID_INBOX_FORMAT),
        ({"password": "am_invalidkey"}, Reason.INVALID_API_KEY_FORMAT),
        ({"key": None}, Reason.API_KEY_NOT_FOUND),
        ({"key": KeyFacts(1, 10, True, None, ("smtp:send",))}, Reason.API_KEY_REVOKED),
        ({"key": KeyFacts(1, 10, False, NOW, ("smtp:send",))}, Reason.API_KEY_EXPIRED),
        ({"key": KeyFacts(1, 10, False, NOW + timedelta(seconds=1), ("smtp:send",))}, Reason.OK),
        ({"key": KeyFacts(1, 10, False, None, ("messages:read",))}, Reason.INSUFFICIENT_PERMISSIONS),
        ({"inbox": None}, Reason.INBOX_NOT_FOUND),
        ({"inbox": InboxFacts(2, INBOX, 10, "disabled", "a@b.c")}, Reason.INBOX_DISABLED),
        ({"inbox": InboxFacts(2, INBOX, 10, "suspended", "a@b.c")}, Reason.INBOX_SUSPENDED),
        ({"inbox": InboxFacts(2, INBOX, 11, "active", "a@b.c")}, Reason.ORGANIZATION_MISMATCH),
        ({"key": KeyFacts(1, 10, False, None, ("smtp:send",), frozenset({3}))}, Reason.INBOX_NOT_ALLOWED),
        ({"key": KeyFacts(1, 10, False, None, ("smtp:send",), frozenset({2, 3}))}, Reason.OK),
        ({"username": "a@b.c"}, Reason.OK),
        ({"username": "a b@b.c"}, Reason.INVALID_INBOX_FORMAT),
        ({"username": "@b.c"}, Reason.INVALID_INBOX_FORMAT),
        ({"password": CHECKSUMMED[:-1] + ("A" if CHECKSUMMED[-1] != "A" else "B")}, Reason.MALFORMED_KEY),
        ({"password": CHECKSUMMED}, Reason.OK),
    ],
)
def test_each_check(kwargs: dict, reason: Reason) -> None:  # type: ignore[type-arg]
    assert run(**kwargs) is reason


def test_order_earlier_checks_win() -> None:
    """With everything wrong at once, each check hides the ones after it."""
    bad_key = KeyFacts(1, 11, True, NOW - timedelta(days=1), ())
    bad_inbox = InboxFacts(2, INBOX, 12, "disabled", "a@b.c")
    assert run(username="bad", password="bad", key=None, inbox=None) is Reason.INVALID_INBOX_FORMAT
    assert run(password="bad", key=None, inbox=None) is Reason.INVALID_API_KEY_FORMAT
    assert run(key=None, inbox=None) is Reason.API_KEY_NOT_FOUND
    assert run(key=bad_key, inbox=None) is Reason.API_KEY_REVOKED
    assert run(key=KeyFacts(1, 11, False, NOW, ()), inbox=None) is Reason.API_KEY_EXPIRED
    assert run(key=KeyFacts(1, 11, False, None, ()), inbox=None) is Reason.INSUFFICIENT_PERMISSIONS
    assert run(key=KeyFacts(1, 11, False, None, ("smtp:send",)), inbox=None) is Reason.INBOX_NOT_FOUND
    assert run(key=KeyFacts(1, 11, False, None, ("smtp:send",)), inbox=bad_inbox) is Reason.INBOX_DISABLED


def test_format_failures_do_not_touch_the_lookup() -> None:
    lookup, calls = lookup_of(GOOD_KEY, GOOD_INBOX)
    validate("nope", KEY, lookup, NOW)
    validate(INBOX, "nope", lookup, NOW)
    assert calls == []


def test_an_address_is_looked_up_with_its_domain_in_lower_case() -> None:
    lookup, calls = lookup_of(GOOD_KEY, GOOD_INBOX)
    assert validate("Agent.Smith@AgentMail.DEV", KEY, lookup, NOW).success
    assert calls == [("Agent.Smith@agentmail.dev", digest_key(KEY))]  # the local part as given


def test_the_inbox_limit_comes_after_the_organization_match() -> None:
    limited = KeyFacts(1, 10, False, None, ("smtp:send",), frozenset({3}))
    assert run(key=limited, inbox=InboxFacts(2, INBOX, 11, "active", "a@b.c")) is Reason.ORGANIZATION_MISMATCH
    assert run(key=limited, inbox=InboxFacts(2, INBOX, 10, "disabled", "a@b.c")) is Reason.INBOX_DISABLED


def test_a_bad_checksum_is_refused_before_the_lookup() -> None:
    lookup, calls = lookup_of(GOOD_KEY, GOOD_INBOX)
    assert validate(INBOX, CHECKSUMMED[:-1] + "!", lookup, NOW).reason is Reason.INVALID_API_KEY_FORMAT
    wrong = CHECKSUMMED[:5] + ("x" if CHECKSUMMED[5] != "x" else "y") + CHECKSUMMED[6:]
    assert validate(INBOX, wrong, lookup, NOW).reason is Reason.MALFORMED_KEY
    assert calls == []
