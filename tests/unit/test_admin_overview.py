"""The admin's overview page: staff only, its SVG charts, the counts of known rows
(read afresh and from the settled hours' summaries), and a number of queries that
does not grow with the rows."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from delivery.models import Recipient
from inboxes.models import Inbox, Message, Organization
from smtpgateway.models import AuthAttempt, AuthHourSummary
from smtpgateway.overview import HOURS, LimitUse, hour_starts, read_overview
from smtpgateway.storage import sending_limits

pytestmark = pytest.mark.usefixtures("scenarios")

URL = "/admin/overview/"


def attempt(when: datetime, reason: str, network: str | None, username: str = "inb_valid1234567890") -> AuthAttempt:
    from smtpgateway.reasons import CREDENTIAL_FAILURES

    return AuthAttempt(
        created_at=when,
        session_id="s",
        remote_addr=None,
        client_network=network,
        username=username,
        success=reason == "OK",
        credential_failure=reason in CREDENTIAL_FAILURES,
        reason=reason,
        mechanism="PLAIN",
    )


@pytest.fixture
def known_rows() -> datetime:
    """Attempts, messages and recipients at known hours; returns "now"."""
    now = timezone.now()
    hours = hour_starts(now)
    this_hour, five_ago = hours[-1], hours[-6]
    AuthAttempt.objects.bulk_create(
        [attempt(this_hour + timedelta(seconds=n), "OK", "198.51.100.4") for n in range(3)]
        + [
            attempt(five_ago, "API_KEY_NOT_FOUND", "203.0.113.7", "inb_guessed000000001"),
            attempt(five_ago, "API_KEY_NOT_FOUND", "203.0.113.9", "inb_guessed000000001"),
            attempt(five_ago, "INBOX_NOT_FOUND", "203.0.113.250", "inb_guessed000000002"),
            attempt(five_ago, "API_KEY_REVOKED", "2001:db8:1:2::/64", "<script>x</script>"),
            attempt(five_ago, "MALFORMED", "192.0.2.1"),  # failed, but no credential check
            attempt(now - timedelta(hours=30), "API_KEY_NOT_FOUND", "192.0.2.99"),  # before the window
        ]
    )
    inbox = Inbox.objects.get(inbox_id="inb_valid1234567890")
    for queue_id, status in (("Q1", "queued"), ("Q2", "deferred"), ("Q3", "deferred"), ("Q4", "delivered")):
        Message.objects.create(
            queue_id=queue_id, inbox=inbox, envelope_from=inbox.email, envelope_to=["a@example.com"], size=10, raw=b"x"
        )
        Recipient.objects.create(message_id=queue_id, address="a@example.com", status=status, next_attempt_at=now)
    Message.objects.filter(queue_id="Q4").update(created_at=five_ago)
    return now


def test_staff_see_it_others_are_sent_to_the_login(admin_client: Client, client: Client) -> None:
    assert admin_client.get(URL).status_code == 200
    assert client.get(URL)["Location"] == f"/admin/login/?next={URL}"
    User.objects.create_user("viewer", password="not-staff-0123")
    client.login(username="viewer", password="not-staff-0123")
    response = client.get(URL)
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")


def test_the_admin_index_links_to_it(admin_client: Client) -> None:
    assert f'href="{URL}"'.encode() in admin_client.get(reverse("admin:index")).content


@pytest.mark.parametrize("reads", [1, 2], ids=["afresh", "kept hours"])
def test_counts_of_known_rows(known_rows: datetime, reads: int) -> None:
    for _ in range(reads):
        data = read_overview(known_rows)
    assert AuthHourSummary.objects.count() in (HOURS - 2, HOURS - 1)  # the settled hours, once each
    assert data.auth_totals == {"success": 3, "failed credentials": 4, "other failures": 1}
    assert data.auth_hours[-1].counts == {"success": 3, "failed credentials": 0, "other failures": 0}
    assert data.auth_hours[-6].counts == {"success": 0, "failed credentials": 4, "other failures": 1}
    assert len(data.auth_hours) == 24
    assert data.failing_networks == [("203.0.113.0/24", 3), ("2001:db8:1:2::/64", 1)]
    assert data.failing_usernames == [
        ("inb_guessed000000001", 2),
        ("<script>x</script>", 1),
        ("inb_guessed000000002", 1),
    ]
    assert data.messages_total == 4
    assert data.message_hours[-1].total == 3 and data.message_hours[-6].total == 1
    assert data.queue == {"queued": 1, "deferred": 2}
    assert data.oldest_deferred is not None
    # No limit set anywhere (SMTP_DAILY_RECIPIENT_LIMIT is 0): nobody is near one.
    assert data.nearest_limits == []


def test_inboxes_nearest_their_limits(known_rows: datetime) -> None:
    inbox = Inbox.objects.get(inbox_id="inb_valid1234567890")
    other = Inbox.objects.get(inbox_id="inb_disabled456789012")  # the same organization
    # As the committer tallies messages: 3 recipients an hour ago, 1 just now; and
    # one more day-old (no longer counted); the other inbox sent 1.
    sending_limits.tally([(inbox.pk, inbox.organization_id, 3)], known_rows - timedelta(hours=1))
    sending_limits.tally([(inbox.pk, inbox.organization_id, 1), (other.pk, other.organization_id, 1)], known_rows)
    sending_limits.tally([(inbox.pk, inbox.organization_id, 50)], known_rows - timedelta(hours=25))
    assert read_overview(known_rows).nearest_limits == []  # no limit set anywhere
    Inbox.objects.filter(pk=inbox.pk).update(daily_recipient_limit=10)
    assert read_overview(known_rows).nearest_limits == [
        LimitUse("inb_valid1234567890", "org_abc", "inbox", used=4, limit=10)
    ]
    Organization.objects.filter(public_id="org_abc").update(daily_recipient_limit=8)
    nearest = read_overview(known_rows).nearest_limits
    assert [(use.inbox_id, use.scope, use.used, use.limit, use.percent) for use in nearest] == [
        ("inb_disabled456789012", "organization", 5, 8, 62),
        ("inb_valid1234567890", "organization", 5, 8, 62),
    ]


def test_the_page_draws_its_charts_as_svg_and_escapes_what_clients_sent(
    admin_client: Client, known_rows: datetime
) -> None:
    page = admin_client.get(URL).content.decode()
    charts = re.findall(r'<div class="overview-chart" id="(\w+)-chart">(<svg .*?</svg>)</div>', page, re.S)
    assert [name for name, _ in charts] == ["auth", "message"]
    auth_chart = charts[0][1]
    assert "AUTH attempts per hour" in auth_chart
    # One bar per hour; this hour's bar says its counts.
    assert auth_chart.count("<g><title>") == 24
    this_hour = f"{hour_starts(known_rows)[-1]:%H}:00"
    assert f"<title>{this_hour}: 3 success, 0 failed credentials, 0 other failures</title>" in auth_chart
    assert "<script" not in page.split("<body", 1)[1].replace("&lt;script&gt;", "")
    assert "&lt;script&gt;x&lt;/script&gt;" in page  # the username, escaped
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")  # nothing fetched from elsewhere
    assert "203.0.113.0/24" in page and ">3<" in page


def test_a_fixed_number_of_queries_however_many_rows(admin_client: Client, known_rows: datetime) -> None:
    def queries() -> int:
        """Statements run, not counting transaction control (SQLite's BEGIN and
        COMMIT are statements, PostgreSQL's are not)."""
        with CaptureQueriesContext(connection) as captured:
            assert admin_client.get(URL).status_code == 200
        control = ("BEGIN", "COMMIT", "SAVEPOINT", "RELEASE SAVEPOINT", "ROLLBACK")
        return sum(not query["sql"].startswith(control) for query in captured.captured_queries)

    cold, warm = queries(), queries()
    for hours_back in (0, 3):  # this hour (read every time) and a settled one (kept)
        base = hour_starts(known_rows)[-1 - hours_back]
        AuthAttempt.objects.bulk_create(
            attempt(base + timedelta(seconds=n), "API_KEY_NOT_FOUND", f"10.{n % 200}.{n % 7}.1", f"inb_user{n:014d}")
            for n in range(500)
        )
    AuthHourSummary.objects.all().delete()
    assert (queries(), queries()) == (cold, warm)
    # Session and user, then: the summaries, the hours not summarized with their
    # networks and usernames; the messages; the queue (two); the sending limits
    # (two: nobody has sent; three once someone has).
    assert warm == 2 + 1 + 3 + 1 + 2 + 2, warm
    # The first view summarized each settled hour in three queries, 22 or 23 of
    # them (the last hour settles two minutes after it ended), and wrote them (and
    # deleted summaries older than a day) in two more.
    assert cold - warm in (3 * (HOURS - 2) + 2, 3 * (HOURS - 1) + 2), cold


def test_rows_from_the_future_are_left_out(known_rows: datetime) -> None:
    AuthAttempt.objects.bulk_create([attempt(known_rows + timedelta(hours=3), "OK", "198.51.100.4")])
    assert read_overview(known_rows).auth_totals["success"] == 3


def test_an_empty_database(admin_client: Client) -> None:
    page = admin_client.get(URL).content.decode()
    assert page.count('<div class="overview-chart"') == 2 and "<td>none</td>" in page
