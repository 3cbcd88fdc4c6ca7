"""Daily recipient limits, enforced at RCPT and counted in the database: exact
across gateways, given back when a transaction ends without a message."""

from __future__ import annotations

import re
import smtplib
import threading
from datetime import timedelta
from typing import Any

from django.utils import timezone

from delivery.models import Recipient
from inboxes.models import Inbox, Message, Organization, RecipientHold, SendingTally
from smtpgateway.storage.sending_limits import HOLD_LIFETIME, counted, delete_old_tallies, minute_of
from tests.helpers import VALID_EMAIL, VALID_INBOX, VALID_KEY, GatewayFactory, LiveGateway, Wire, b64, eventually

BODY = f"From: {VALID_EMAIL}\r\nSubject: limits\r\n\r\nhi\r\n".encode()
OTHER_BODY = b"From: other@agentmail.dev\r\nSubject: limits\r\n\r\nhi\r\n"
LIMIT_REPLY = re.compile(
    r"450 4\.7\.1 Daily recipient limit of (\d+) reached for this (inbox|organization); try again in (\d+) minutes?"
)


def set_limits(inbox: int | None = None, organization: int | None = None) -> None:
    Inbox.objects.filter(inbox_id=VALID_INBOX).update(daily_recipient_limit=inbox)
    Organization.objects.filter(public_id="org_abc").update(daily_recipient_limit=organization)


def session(gateway: LiveGateway) -> Wire:
    wire = gateway.wire()
    wire.command("EHLO tester.example")
    assert wire.command("AUTH PLAIN " + b64(f"\0{VALID_INBOX}\0{VALID_KEY}")).startswith("235 ")
    return wire


def rcpts(wire: Wire, addresses: list[str]) -> list[str]:
    assert wire.command(f"MAIL FROM:<{VALID_EMAIL}>").startswith("250 ")
    return [wire.command(f"RCPT TO:<{address}>") for address in addresses]


def send_data(wire: Wire) -> str:
    assert wire.command("DATA").startswith("354 ")
    wire.sock.sendall(BODY + b".\r\n")
    return wire.reply()[-1]


def test_the_rcpt_past_the_inbox_limit_is_refused_and_the_others_are_sent(gateway: LiveGateway) -> None:
    set_limits(inbox=3)
    wire = session(gateway)
    replies = rcpts(wire, ["a@example.com", "b@example.com", "c@example.com", "d@example.com"])
    assert replies[:3] == ["250 2.1.5 Recipient OK"] * 3
    limit = LIMIT_REPLY.fullmatch(replies[3])
    assert limit is not None and limit.groups()[:2] == ("3", "inbox")
    assert 1 <= int(limit.group(3)) <= 30  # the holds of this very session expire first
    assert send_data(wire).startswith("250 2.0.0 Ok: queued as ")
    message = Message.objects.get()
    assert message.envelope_to == ["a@example.com", "b@example.com", "c@example.com"]
    assert Recipient.objects.count() == 3 and not RecipientHold.objects.exists()  # holds became recipients
    # The next transaction, and the next session, find the day's room used.
    limit = LIMIT_REPLY.fullmatch(rcpts(wire, ["e@example.com"])[0])
    assert limit is not None and 60 * 23 < int(limit.group(3)) <= 60 * 24 + 1  # its minute turns a day old
    assert LIMIT_REPLY.fullmatch(rcpts(session(gateway), ["e@example.com"])[0])


def test_a_transaction_that_ends_without_a_message_gives_its_room_back(gateway: LiveGateway) -> None:
    set_limits(inbox=2)
    wire = session(gateway)
    assert rcpts(wire, ["a@example.com", "b@example.com"]) == ["250 2.1.5 Recipient OK"] * 2
    assert RecipientHold.objects.count() == 2
    assert wire.command("RSET").startswith("250 ")
    assert rcpts(wire, ["c@example.com", "d@example.com"]) == ["250 2.1.5 Recipient OK"] * 2
    wire.close()  # the client leaves mid-transaction: its holds go once the server has seen it leave
    eventually(lambda: not RecipientHold.objects.exists())
    assert rcpts(session(gateway), ["e@example.com", "f@example.com"]) == ["250 2.1.5 Recipient OK"] * 2
    # A message refused by the From check gives its room back too.
    wire = session(gateway)
    rcpts(wire, ["g@example.com"])
    assert wire.command("DATA").startswith("354 ")
    wire.sock.sendall(b"From: someone@example.com\r\n\r\nhi\r\n.\r\n")
    assert wire.reply()[-1].startswith("550 5.7.1")
    gateway.settle()
    assert rcpts(wire, ["h@example.com"]) == ["250 2.1.5 Recipient OK"]


def test_the_organization_limit_counts_all_its_inboxes_and_the_setting_is_the_default(
    gateway_factory: GatewayFactory, scenarios: None
) -> None:
    gateway = gateway_factory(daily_recipient_limit=4)  # SMTP_DAILY_RECIPIENT_LIMIT
    set_limits(inbox=0, organization=None)  # the inbox: no limit; the organization: the setting's 4
    with gateway.smtp() as client:  # another inbox of the organization sends to two
        client.login("inb_other12345678901", "am_validkey12345678901234567890123456")
        client.sendmail("other@agentmail.dev", ["x@example.com", "y@example.com"], OTHER_BODY)
    wire = session(gateway)
    replies = rcpts(wire, ["a@example.com", "b@example.com", "c@example.com"])
    assert replies[:2] == ["250 2.1.5 Recipient OK"] * 2
    limit = LIMIT_REPLY.fullmatch(replies[2])
    assert limit is not None and limit.groups()[:2] == ("4", "organization")


def test_old_tallies_and_expired_holds_do_not_count(db: None, scenarios: None) -> None:
    inbox = Inbox.objects.get(inbox_id=VALID_INBOX)
    now = timezone.now()
    for scope, owner in (("inbox", inbox.pk), ("organization", inbox.organization_id)):
        for age, recipients in ((timedelta(hours=24, minutes=2), 100), (timedelta(hours=23, minutes=58), 1)):
            SendingTally.objects.create(scope=scope, owner_id=owner, minute=minute_of(now - age), recipients=recipients)
    RecipientHold.objects.create(
        inbox=inbox, organization_id=inbox.organization_id, session_id="s", created_at=now, expires_at=now
    )
    RecipientHold.objects.create(
        inbox=inbox,
        organization_id=inbox.organization_id,
        session_id="s",
        created_at=now,
        expires_at=now + HOLD_LIFETIME,
    )
    assert counted(inbox.pk, inbox.organization_id, now) == (2, 2)  # the recent tally and the live hold
    assert counted(inbox.pk, inbox.organization_id, now, inbox=False) == (0, 2)
    assert delete_old_tallies(now) == 2 and SendingTally.objects.count() == 2


def test_two_gateways_share_one_limit_exactly(gateway_factory: GatewayFactory, scenarios: None) -> None:
    """Eight clients on two gateways race for 25 recipients of room."""
    set_limits(inbox=25)
    gateways = [gateway_factory(), gateway_factory()]
    accepted: list[int] = []
    errors: list[BaseException] = []

    def client(gateway: LiveGateway, number: int) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", gateway.port, timeout=30) as smtp:
                smtp.login(VALID_INBOX, VALID_KEY)
                addresses = [f"c{number}-{n}@example.com" for n in range(10)]
                try:
                    refused: dict[str, Any] = smtp.sendmail(VALID_EMAIL, addresses, BODY)
                except smtplib.SMTPRecipientsRefused as error:
                    refused = error.recipients
                assert all(code == 450 for code, _ in refused.values())
                accepted.append(len(addresses) - len(refused))
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=client, args=(gateways[n % 2], n)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert sum(accepted) == 25 == Recipient.objects.count()
    assert not RecipientHold.objects.exists()


def test_the_admin_shows_usage_against_the_limits(gateway: LiveGateway, admin_client: Any) -> None:
    set_limits(inbox=5)
    wire = session(gateway)
    rcpts(wire, ["a@example.com", "b@example.com"])
    assert send_data(wire).startswith("250 ")
    inbox = Inbox.objects.get(inbox_id=VALID_INBOX)
    page = admin_client.get(f"/admin/inboxes/inbox/{inbox.pk}/change/").content.decode()
    assert "2 of 5 recipients in the last 24 hours" in page
    assert "2 recipients in the last 24 hours; no limit (the setting SMTP_DAILY_RECIPIENT_LIMIT)" in page
    page = admin_client.get(f"/admin/inboxes/organization/{inbox.organization_id}/change/").content.decode()
    assert "2 recipients in the last 24 hours; no limit" in page
