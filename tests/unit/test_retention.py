"""Pruning old AuthAttempt rows: what goes, what stays, and that gateways
running meanwhile lose nothing."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings
from django.utils import timezone

from inboxes.models import Inbox, RecipientHold
from smtpgateway.models import AuthAttempt


def make_attempts(count: int, age: timedelta, tag: str) -> None:
    now = timezone.now()
    AuthAttempt.objects.bulk_create(
        AuthAttempt(
            created_at=now - age - timedelta(seconds=n),
            remote_addr="192.0.2.1",
            session_id=f"{tag}{n}",
            success=False,
            credential_failure=True,
            reason="API_KEY_NOT_FOUND",
        )
        for n in range(count)
    )


@pytest.mark.django_db(transaction=True)
def test_old_rows_go_in_batches_and_recent_ones_stay() -> None:
    make_attempts(25, timedelta(days=100), "old")
    make_attempts(5, timedelta(days=10), "new")
    out = io.StringIO()
    call_command("pruneattempts", "--days", "90", "--batch-size", "7", stdout=out)
    assert out.getvalue().startswith("Deleted 25 AuthAttempt rows created before ")
    assert sorted(AuthAttempt.objects.values_list("session_id", flat=True)) == [f"new{n}" for n in range(5)]
    call_command("pruneattempts", "--days", "90", stdout=out)  # nothing left to do
    assert "Deleted 0 AuthAttempt rows" in out.getvalue()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "rate_limit, days, message",
    [
        ("10/172800", "1", "would delete failures the AUTH rate limit still counts"),
        ("10/600", "0", "must cover a positive time"),
        ("10/600", "-3", "must cover a positive time"),
        ("10/600", "inf", "must be a number of days"),
        ("10/600", "nan", "must be a number of days"),
    ],
)
def test_the_rate_limit_window_is_never_pruned(rate_limit: str, days: str, message: str) -> None:
    make_attempts(3, timedelta(hours=25), "old")
    with override_settings(SMTP_AUTH_RATE_LIMIT=rate_limit), pytest.raises(CommandError, match=message):
        call_command("pruneattempts", "--days", days)
    assert AuthAttempt.objects.count() == 3


@pytest.mark.django_db
def test_expired_recipient_holds_go_and_live_ones_stay(scenarios: None) -> None:
    inbox = Inbox.objects.get(inbox_id="inb_valid1234567890")
    now = timezone.now()
    for session, expires in (("dead", now - timedelta(minutes=1)), ("live", now + timedelta(minutes=29))):
        RecipientHold.objects.create(
            inbox=inbox, organization_id=inbox.organization_id, session_id=session, created_at=now, expires_at=expires
        )
    out = io.StringIO()
    call_command("pruneattempts", stdout=out)
    assert "Deleted 1 expired recipient holds" in out.getvalue()
    assert list(RecipientHold.objects.values_list("session_id", flat=True)) == ["live"]
