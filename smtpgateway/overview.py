"""What the admin's overview page shows (``/admin/overview/``), read in a fixed
number of queries whatever the size of the tables: the last 24 hours of AUTH
attempts by hour and outcome, the client networks and usernames with the most
failed credential checks, the messages accepted by hour, the delivery queue.

Each read goes through an index that holds what it needs (migration 0010):
the hours through ``authattempt_created`` (created_at, with success and
credential_failure beside it), the top lists through ``authattempt_failed_recent``
(the failed credential checks only, with client_network and username beside it).
On PostgreSQL those are index-only scans; measured in docs/performance.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import CharField, Count, Q, Value
from django.db.models.expressions import Case, Func, When
from django.db.models.functions import Concat, TruncHour

from delivery import queue
from inboxes.models import Message
from smtpgateway.models import AuthAttempt

HOURS = 24
TOP = 10
# The outcomes the chart stacks, bottom to top.
OUTCOMES = ("success", "failed credentials", "other failures")


@dataclass(frozen=True)
class Hour:
    start: datetime
    counts: dict[str, int]  # outcome -> AUTH attempts (or "messages" -> messages)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class Overview:
    since: datetime
    auth_hours: list[Hour]
    message_hours: list[Hour]
    failing_networks: list[tuple[str, int]]
    failing_usernames: list[tuple[str, int]]
    queue: dict[str, int]
    oldest_deferred: datetime | None

    @property
    def auth_totals(self) -> dict[str, int]:
        return {outcome: sum(hour.counts[outcome] for hour in self.auth_hours) for outcome in OUTCOMES}

    @property
    def messages_total(self) -> int:
        return sum(hour.total for hour in self.message_hours)


class _RTrim(Func):
    """rtrim(text, characters): the same function on SQLite and PostgreSQL."""

    function = "RTRIM"
    output_field = CharField()


def client_network_group() -> Case:
    """The network a failing client is shown by: an IPv4 address's /24 (its last
    number dropped, as text: one expression on SQLite and PostgreSQL); an IPv6
    client's counted network as recorded (its /64 by default,
    SMTP_IPV6_CLIENT_PREFIX)."""
    return Case(
        When(client_network__contains=":", then="client_network"),
        default=Concat(_RTrim("client_network", Value("0123456789")), Value("0/24")),
        output_field=CharField(),
    )


def hour_starts(now: datetime) -> list[datetime]:
    """The starts of the last HOURS hours, the current (partial) one last."""
    this_hour = now.replace(minute=0, second=0, microsecond=0)
    return [this_hour - timedelta(hours=back) for back in range(HOURS - 1, -1, -1)]


def _outcome(success: bool, credential_failure: bool) -> str:
    return "success" if success else "failed credentials" if credential_failure else "other failures"


def read_overview(now: datetime) -> Overview:
    starts = hour_starts(now)
    since = starts[0]
    by_hour: dict[datetime, dict[str, int]] = {start: dict.fromkeys(OUTCOMES, 0) for start in starts}
    rows = (
        AuthAttempt.objects.filter(created_at__gte=since)
        .annotate(hour=TruncHour("created_at"))
        .values("hour", "success", "credential_failure")
        .annotate(attempts=Count("*"))
        .order_by()
    )
    for row in rows:
        counts = by_hour.get(row["hour"])
        if counts is not None:  # not a row from the future (a clock set back)
            counts[_outcome(row["success"], row["credential_failure"])] += row["attempts"]

    failed = AuthAttempt.objects.filter(Q(credential_failure=True), created_at__gte=since)
    networks = (
        failed.annotate(network=client_network_group())
        .values("network")
        .annotate(failures=Count("*"))
        .order_by("-failures", "network")[:TOP]
    )
    usernames = failed.values("username").annotate(failures=Count("*")).order_by("-failures", "username")[:TOP]

    messages: dict[datetime, dict[str, int]] = {start: {"messages": 0} for start in starts}
    for row in (
        Message.objects.filter(created_at__gte=since)
        .annotate(hour=TruncHour("created_at"))
        .values("hour")
        .annotate(accepted=Count("*"))
        .order_by()
    ):
        if row["hour"] in messages:
            messages[row["hour"]]["messages"] = row["accepted"]

    depth, oldest = queue.queue_depth()
    return Overview(
        since=since,
        auth_hours=[Hour(start, counts) for start, counts in by_hour.items()],
        message_hours=[Hour(start, counts) for start, counts in messages.items()],
        failing_networks=[(row["network"] or "unknown", row["failures"]) for row in networks],
        failing_usernames=[(row["username"], row["failures"]) for row in usernames],
        queue={state: depth.get(state, 0) for state in ("queued", "deferred")},
        oldest_deferred=oldest,
    )
