"""The ten scenarios, over a real socket with smtplib, with PLAIN and with LOGIN."""

from __future__ import annotations

import time

import pytest

from apikeys.models import ApiKey
from inboxes.models import Inbox
from smtpgateway.models import AuthAttempt
from smtpgateway.storage.commits import LAST_USED_RESOLUTION
from tests.helpers import SCENARIOS, VALID_KEY, LiveGateway, Scenario, auth, by_address


@pytest.mark.parametrize("form", ["id", "address"])
@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[f"scenario{s.number}" for s in SCENARIOS])
def test_scenario(gateway: LiveGateway, scenario: Scenario, mechanism: str, form: str) -> None:
    """Each scenario with the inbox named by its id and by its email address
    (AgentMail's form): the same reply, the same reason, the username as given."""
    if form == "address":
        scenario = by_address(scenario)
    with gateway.smtp() as client:
        code, reply = auth(client, mechanism, scenario.username, scenario.password)

    assert reply == scenario.reply
    gateway.settle()
    attempt = AuthAttempt.objects.get()
    assert attempt.success is (scenario.reason == "OK")
    assert attempt.reason == scenario.reason
    assert attempt.mechanism == mechanism
    assert attempt.username == scenario.username
    assert attempt.remote_addr == "127.0.0.1"
    assert attempt.remote_port and attempt.session_id
    well_formed_key = scenario.password.startswith("am_") and len(scenario.password) >= 35
    assert attempt.key_prefix == (scenario.password[:10] if well_formed_key else "")


def test_resolved_rows_are_linked(gateway: LiveGateway) -> None:
    """Scenario 5 resolves both a key and an inbox; the attempt links them."""
    wrong_org = SCENARIOS[4]
    with gateway.smtp() as client:
        auth(client, "PLAIN", wrong_org.username, wrong_org.password)
    gateway.settle()
    attempt = AuthAttempt.objects.select_related("inbox", "api_key", "organization").get()
    assert attempt.inbox is not None and attempt.api_key is not None and attempt.organization is not None
    assert attempt.inbox.inbox_id == wrong_org.username
    assert attempt.api_key.prefix == wrong_org.password[:10]
    assert attempt.organization.public_id == "org_xyz"  # the key's organization


def test_success_updates_last_used_at(gateway: LiveGateway) -> None:
    key = ApiKey.objects.get(prefix=VALID_KEY[:10])
    assert key.last_used_at is None
    with gateway.smtp() as client:
        auth(client, "PLAIN", "inb_valid1234567890", VALID_KEY)
    gateway.settle()
    key.refresh_from_db()
    attempt = AuthAttempt.objects.get()
    assert key.last_used_at == attempt.created_at


def test_last_used_at_is_kept_to_the_second(gateway: LiveGateway) -> None:
    """A key in use is written about once a second, not by every commit."""
    key = ApiKey.objects.get(prefix=VALID_KEY[:10])
    for _ in range(2):  # two commits, milliseconds apart: the second writes nothing
        with gateway.smtp() as client:
            auth(client, "PLAIN", "inb_valid1234567890", VALID_KEY)
        gateway.settle()
    first, second = AuthAttempt.objects.order_by("created_at")
    key.refresh_from_db()
    assert second.created_at - first.created_at < LAST_USED_RESOLUTION
    assert key.last_used_at == first.created_at
    time.sleep(LAST_USED_RESOLUTION.total_seconds())
    with gateway.smtp() as client:
        auth(client, "PLAIN", "inb_valid1234567890", VALID_KEY)
    gateway.settle()
    key.refresh_from_db()
    assert key.last_used_at == AuthAttempt.objects.latest("created_at").created_at


def test_suspended_inbox_is_refused(gateway: LiveGateway) -> None:
    with gateway.smtp() as client:
        _, reply = auth(client, "PLAIN", "inb_suspended78901234", VALID_KEY)
    assert reply == "535 5.7.8 Authentication credentials invalid"
    gateway.settle()
    assert AuthAttempt.objects.get().reason == "INBOX_SUSPENDED"


def test_failures_are_logged_with_reason_but_reply_is_generic(
    gateway: LiveGateway, caplog: pytest.LogCaptureFixture
) -> None:
    with gateway.smtp() as client:
        _, reply = auth(client, "PLAIN", "inb_doesnotexist00000", VALID_KEY)
    assert reply == "535 5.7.8 Authentication credentials invalid"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and r.name == "smtpgateway.server"]
    assert any(m.startswith("Auth failed: INBOX_NOT_FOUND, returning 535 5.7.8") for m in warnings), warnings


def test_inbox_status_change_takes_effect_at_next_auth(gateway: LiveGateway) -> None:
    Inbox.objects.filter(inbox_id="inb_valid1234567890").update(status=Inbox.Status.DISABLED)
    with gateway.smtp() as client:
        _, reply = auth(client, "PLAIN", "inb_valid1234567890", VALID_KEY)
    assert reply == "535 5.7.8 Authentication credentials invalid"
    gateway.settle()
    assert AuthAttempt.objects.get().reason == "INBOX_DISABLED"
