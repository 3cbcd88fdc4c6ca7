"""The committer's own INSERTs write what Django's would: a message's Recipient
rows (one prepared row, varied by message and address) and the minute's
SendingTally rows (one statement per batch)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import transaction
from django.forms.models import model_to_dict
from django.utils import timezone

from delivery.models import Recipient
from inboxes.models import Inbox, Message, Organization, SendingTally
from smtpgateway.storage.inserts import insert_alike
from smtpgateway.storage.message_inserts import NewMessage, insert_messages
from smtpgateway.storage.sending_limits import INBOX, ORGANIZATION, minute_of, tally

pytestmark = pytest.mark.usefixtures("scenarios")


def new_message(queue_id: str, inbox: Inbox, recipients: list[str]) -> NewMessage:
    row = Message(
        queue_id=queue_id, inbox=inbox, envelope_from=inbox.email, envelope_to=recipients, size=4, session_id="s"
    )
    return NewMessage(row, b"Received: x\r\n", b"body", inbox.organization_id)


def test_recipient_rows_are_those_django_would_write() -> None:
    inbox = Inbox.objects.get(inbox_id="inb_valid1234567890")
    before = timezone.now()
    with transaction.atomic():
        insert_messages(
            [new_message("Q1", inbox, ["a@example.com", "b@example.com"]), new_message("Q2", inbox, ["c@x.test"])]
        )
    after = timezone.now()
    written = list(Recipient.objects.order_by("address"))
    assert [(r.message_id, r.address) for r in written] == [
        ("Q1", "a@example.com"),
        ("Q1", "b@example.com"),
        ("Q2", "c@x.test"),
    ]
    for recipient in written:
        assert before <= recipient.next_attempt_at <= after
        expected = Recipient(
            message_id=recipient.message_id, address=recipient.address, next_attempt_at=recipient.next_attempt_at
        )
        expected.save()  # as Django writes it, then read back like the other
        assert model_to_dict(Recipient.objects.get(pk=expected.pk), exclude=["id"]) == model_to_dict(
            recipient, exclude=["id"]
        )


def test_tallies_add_up_per_owner_within_the_minute() -> None:
    valid = Inbox.objects.get(inbox_id="inb_valid1234567890")
    other = Inbox.objects.get(inbox_id="inb_other12345678901")
    foreign = Inbox.objects.create(
        inbox_id="inb_xyzinbox12345678", organization=Organization.objects.get(public_id="org_xyz"), email="x@xyz.test"
    )
    now = minute_of(timezone.now()) + timedelta(seconds=30)
    with transaction.atomic():
        tally([(valid.pk, valid.organization_id, 2), (other.pk, other.organization_id, 3)], now)
        tally(
            [(valid.pk, valid.organization_id, 1), (foreign.pk, foreign.organization_id, 4)], now + timedelta(seconds=5)
        )
    tally([(valid.pk, valid.organization_id, 10)], now + timedelta(minutes=1))  # the next minute: a row of its own
    rows = {(t.scope, t.owner_id, t.minute): t.recipients for t in SendingTally.objects.all()}
    minute, next_minute = minute_of(now), minute_of(now) + timedelta(minutes=1)
    assert rows == {
        (INBOX, valid.pk, minute): 3,
        (INBOX, other.pk, minute): 3,
        (INBOX, foreign.pk, minute): 4,
        (ORGANIZATION, valid.organization_id, minute): 6,
        (ORGANIZATION, foreign.organization_id, minute): 4,
        (INBOX, valid.pk, next_minute): 10,
        (ORGANIZATION, valid.organization_id, next_minute): 10,
    }


def test_rows_alike_refuse_a_field_made_per_row() -> None:
    """The prepared row is kept for the process: an ``auto_now_add`` time (or a
    callable default) in it would be the first row's for every later one."""
    with pytest.raises(ValueError, match="Message.created_at takes a new value per row"):
        insert_alike(Message, ("queue_id",), [("Q1",)])
