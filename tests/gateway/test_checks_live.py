"""The batch checker behind a live gateway: a key revoked or an inbox disabled
is refused within the cache bound, and a check that fails on a bug is
answered 454 and recorded."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from django.utils import timezone

from apikeys.models import ApiKey
from inboxes.models import Inbox
from smtpgateway.auth.checker import MAX_CACHE_SECONDS
from smtpgateway.models import AuthAttempt
from tests.helpers import VALID_INBOX, VALID_KEY, LiveGateway, b64

GOOD = "AUTH PLAIN " + b64(f"\0{VALID_INBOX}\0{VALID_KEY}")


OK = "235 2.7.0 Authentication successful"


REFUSED = "535 5.7.8 Authentication credentials invalid"


def auth_reply(gateway: LiveGateway) -> str:
    wire = gateway.wire()
    assert wire.command("EHLO tester.example").startswith("250 ")
    return wire.command(GOOD)


def revoke_key() -> None:
    ApiKey.objects.filter(prefix=VALID_KEY[:10]).update(revoked_at=timezone.now())


def disable_inbox() -> None:
    Inbox.objects.filter(inbox_id=VALID_INBOX).update(status=Inbox.Status.DISABLED)


@pytest.mark.parametrize("change", [revoke_key, disable_inbox], ids=["key revoked", "inbox disabled"])
def test_change_is_refused_within_the_cache_bound(
    gateway_factory: Any, scenarios: None, change: Callable[[], None]
) -> None:
    gateway = gateway_factory(auth_cache_seconds=1.0)
    assert auth_reply(gateway) == OK  # the key and inbox are now cached
    fetched = time.monotonic()
    change()
    changed = time.monotonic()
    if changed - fetched < 0.5:
        # Served from memory: the change is not seen yet (this is the cache at work).
        assert auth_reply(gateway) == OK
    time.sleep(max(0.0, changed + MAX_CACHE_SECONDS - time.monotonic()))
    assert auth_reply(gateway) == REFUSED  # one second after the change, never later


@pytest.mark.parametrize("change", [revoke_key, disable_inbox], ids=["key revoked", "inbox disabled"])
def test_without_the_cache_a_change_is_refused_at_once(
    gateway_factory: Any, scenarios: None, change: Callable[[], None]
) -> None:
    gateway = gateway_factory(auth_cache_seconds=0)
    assert auth_reply(gateway) == OK
    change()
    assert auth_reply(gateway) == REFUSED


def test_a_check_that_fails_on_a_bug_is_answered_454_and_recorded(
    gateway: LiveGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in the checks (simulated: validation raises) must not cost the
    attempt's record, nor the next client its AUTH."""
    import smtpgateway.auth.checker
    import smtpgateway.auth.rules

    real_validate = smtpgateway.auth.rules.validate

    def buggy_validate(username: str, *args: Any) -> Any:
        if username == VALID_INBOX:
            raise RuntimeError("simulated bug in the checks")
        return real_validate(username, *args)

    monkeypatch.setattr(smtpgateway.auth.checker, "validate", buggy_validate)
    assert auth_reply(gateway) == "454 4.7.0 Temporary authentication failure"
    monkeypatch.setattr(smtpgateway.auth.checker, "validate", real_validate)
    assert auth_reply(gateway) == OK
    gateway.settle()
    assert list(AuthAttempt.objects.order_by("created_at").values_list("reason", flat=True)) == [
        "TEMPORARY_FAILURE",
        "OK",
    ]
