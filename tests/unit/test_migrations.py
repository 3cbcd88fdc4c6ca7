"""Migrations that move data, run forwards on the real database."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from smtpgateway.models import AuthAttempt

BEFORE, AFTER = ("smtpgateway", "0008_authzid_reason"), ("smtpgateway", "0009_client_network")


def migrate_to(target: tuple[str, str]) -> MigrationExecutor:
    executor = MigrationExecutor(connection)
    executor.migrate([target])
    return executor


@pytest.mark.django_db(transaction=True)
def test_client_network_is_filled_for_the_current_window(settings: object) -> None:
    """An address locked out before the upgrade stays locked out after it:
    migration 0009 fills client_network for the counted failures of the current
    rate-limit window. Older rows and other outcomes are not read again."""
    settings.SMTP_AUTH_RATE_LIMIT = "10/600"  # type: ignore[attr-defined]
    try:
        executor = migrate_to(BEFORE)
        Old = executor.loader.project_state(BEFORE).apps.get_model("smtpgateway", "AuthAttempt")
        now = timezone.now()
        rows = [
            ("192.0.2.1", now - timedelta(seconds=30), True),
            ("2001:db8:1:2::a", now - timedelta(seconds=30), True),
            ("::ffff:192.0.2.9", now - timedelta(seconds=30), True),
            ("192.0.2.2", now - timedelta(hours=2), True),  # outside the window
            ("192.0.2.3", now - timedelta(seconds=30), False),  # not a counted failure
        ]
        Old.objects.bulk_create(
            Old(
                created_at=when,
                remote_addr=address,
                session_id=address,
                mechanism="PLAIN",
                success=False,
                reason="API_KEY_NOT_FOUND" if counted else "MALFORMED",
                credential_failure=counted,
            )
            for address, when, counted in rows
        )
        migrate_to(AFTER)
        filled = dict(AuthAttempt.objects.values_list("remote_addr", "client_network"))
        assert filled == {
            "192.0.2.1": "192.0.2.1",
            "2001:db8:1:2::a": "2001:db8:1:2::/64",
            "::ffff:192.0.2.9": "192.0.2.9",
            "192.0.2.2": None,
            "192.0.2.3": None,
        }
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())


@pytest.mark.django_db(transaction=True)
def test_queued_messages_get_their_recipients() -> None:
    """Messages accepted before delivery existed: one recipient per envelope
    recipient (each once), due at their arrival; other statuses are left alone."""
    # Before the data migration, with every other app at its latest (their
    # columns exist in the database whatever is migrated back).
    before = [("delivery", "0001_initial"), ("inboxes", "0004_message_session_id")]
    after = ("delivery", "0002_recipients_of_queued_messages")
    try:
        executor = MigrationExecutor(connection)
        executor.migrate(before)
        apps = executor.loader.project_state(before).apps
        organization = apps.get_model("inboxes", "Organization").objects.create(public_id="org_mig", name="m")
        inbox = apps.get_model("inboxes", "Inbox").objects.create(
            inbox_id="inb_migration00001", organization=organization, email="m@agentmail.dev"
        )
        message = apps.get_model("inboxes", "Message")
        for queue_id, recipients, status in (
            ("Q1", ["a@example.com", "b@example.com", "a@example.com"], "queued"),
            ("Q2", ["c@example.com"], "delivered"),
        ):
            message.objects.create(
                queue_id=queue_id,
                inbox=inbox,
                envelope_from="m@agentmail.dev",
                envelope_to=recipients,
                size=1,
                raw=b"x",
                status=status,
            )
        migrate_to(after)
        from delivery.models import Recipient

        made = sorted(Recipient.objects.values_list("message__queue_id", "address", "status"))
        assert made == [("Q1", "a@example.com", "queued"), ("Q1", "b@example.com", "queued")]
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())
