"""What the admin's overview page shows (``/admin/overview/``), read in a number
of queries that does not grow with the tables: the last 24 hours of AUTH
attempts by hour and outcome, the client networks and usernames with the most
failed credential checks, the messages accepted by hour, the inboxes nearest
their daily recipient limits, the delivery queue.

Each read goes through an index that holds what it needs (migration 0012):
the hours through ``authattempt_created`` (created_at, with success and
credential_failure beside it), the top lists through ``authattempt_failed_recent``
(the failed credential checks only, with client_network and username beside it).
On PostgreSQL those are index-only scans.

Even so, counting a day of attempts means reading every one of them: 2 million
in a day took 2 s on the benchmark machine. So an hour that is over (and
:data:`SETTLED`) is summarized once into an ``AuthHourSummary`` row (its counts,
and its :data:`TOP_PER_HOUR` networks and usernames), shared by every admin
process; a view reads the summaries and the hours not summarized, the current one
at least, and merges. The top lists are then exact for those hours and for
anything among an earlier hour's top 200. Figures in docs/performance.md.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import CharField, Count, Q, QuerySet, Sum, Value
from django.db.models.expressions import Case, Func, When
from django.db.models.functions import Concat, TruncHour

from delivery import queue
from inboxes.models import Inbox, Message, RecipientHold, SendingTally
from smtpgateway.models import AuthAttempt, AuthHourSummary
from smtpgateway.storage.sending_limits import INBOX, ORGANIZATION, WINDOW, minute_of

HOURS = 24
TOP = 10
TOP_PER_HOUR = 200  # networks and usernames an hour's summary keeps
# An hour is summarized for good this long after it ended: AuthAttempt records
# the database could not take are written later, with their own time (every 5 s
# once it is back; docs/reliability.md).
SETTLED = timedelta(minutes=2)
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
class LimitUse:
    """An inbox's recipients of the last 24 hours against its daily limit, or its
    organization's (whichever it is nearer)."""

    inbox_id: str
    organization: str
    scope: str  # "inbox" or "organization": the limit it is nearer
    used: int
    limit: int

    @property
    def percent(self) -> int:
        return round(100 * self.used / self.limit)


@dataclass(frozen=True)
class Overview:
    since: datetime
    auth_hours: list[Hour]
    message_hours: list[Hour]
    failing_networks: list[tuple[str, int]]
    failing_usernames: list[tuple[str, int]]
    queue: dict[str, int]
    oldest_deferred: datetime | None
    nearest_limits: list[LimitUse]

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


@dataclass(frozen=True)
class Summary:
    """The AUTH attempts of some hours: counts by hour and outcome, and the
    failed credential checks by network and by username (the most first)."""

    hours: dict[datetime, dict[str, int]]
    networks: dict[str, int]
    usernames: dict[str, int]


def summarize(since: datetime, until: datetime | None, top: int | None = None) -> Summary:
    """Three queries over [since, until); ``top``: keep only that many networks and usernames."""
    window: QuerySet[AuthAttempt] = AuthAttempt.objects.filter(created_at__gte=since)
    if until is not None:
        window = window.filter(created_at__lt=until)
    hours: dict[datetime, dict[str, int]] = {}
    rows = (
        window.annotate(hour=TruncHour("created_at"))
        .values("hour", "success", "credential_failure")
        .annotate(attempts=Count("*"))
        .order_by()
    )
    for row in rows:
        counts = hours.setdefault(row["hour"], dict.fromkeys(OUTCOMES, 0))
        counts[_outcome(row["success"], row["credential_failure"])] += row["attempts"]
    failed = window.filter(Q(credential_failure=True))
    networks = (
        failed.annotate(network=client_network_group())
        .values("network")
        .annotate(failures=Count("*"))
        .order_by("-failures", "network")
    )
    usernames = failed.values("username").annotate(failures=Count("*")).order_by("-failures", "username")
    if top is not None:
        networks, usernames = networks[:top], usernames[:top]
    return Summary(
        hours,
        {row["network"] or "unknown": row["failures"] for row in networks},
        {row["username"]: row["failures"] for row in usernames},
    )


def _top(counts: dict[str, int]) -> list[tuple[str, int]]:
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:TOP]


def auth_summaries(now: datetime, starts: list[datetime]) -> list[Summary]:
    """The window's hours: the settled ones from their AuthHourSummary rows
    (summarized and written now where there is none yet), the rest read."""
    settled = [start for start in starts if start + timedelta(hours=1) + SETTLED <= now]
    kept = {row.hour: row for row in AuthHourSummary.objects.filter(hour__in=settled)}
    summaries, made = [], []
    for start in settled:
        row = kept.get(start)
        if row is None:
            summary = summarize(start, start + timedelta(hours=1), top=TOP_PER_HOUR)
            counts = summary.hours.get(start, dict.fromkeys(OUTCOMES, 0))
            row = AuthHourSummary(hour=start, counts=counts, networks=summary.networks, usernames=summary.usernames)
            made.append(row)
        summaries.append(Summary({start: dict(row.counts)}, dict(row.networks), dict(row.usernames)))
    if made:
        # Another view may have written the same hours meanwhile: the same rows.
        with transaction.atomic():
            AuthHourSummary.objects.bulk_create(made, ignore_conflicts=True)
            AuthHourSummary.objects.filter(hour__lt=starts[0] - timedelta(hours=HOURS)).delete()
    live_since = settled[-1] + timedelta(hours=1) if settled else starts[0]
    summaries.append(summarize(live_since, None))
    return summaries


def nearest_limits(now: datetime) -> list[LimitUse]:
    """The TOP inboxes that have used the most of their daily recipient limit, or
    of their organization's, counted as the limits count
    (``smtpgateway.storage.sending_limits``: the per-minute tallies of the last 24
    hours, and the holds of messages not committed yet). Three queries, over at
    most a day of tallies."""
    used = {INBOX: Counter[int](), ORGANIZATION: Counter[int]()}
    tallies = (
        SendingTally.objects.filter(minute__gte=minute_of(now - WINDOW))
        .values("scope", "owner_id")
        .annotate(recipients=Sum("recipients"))
        .order_by()
    )
    for row in tallies:
        used[row["scope"]][row["owner_id"]] += row["recipients"]
    holds = (
        RecipientHold.objects.filter(expires_at__gt=now)
        .values("inbox_id", "organization_id")
        .annotate(holds=Count("*"))
        .order_by()
    )
    for row in holds:
        used[INBOX][row["inbox_id"]] += row["holds"]
        used[ORGANIZATION][row["organization_id"]] += row["holds"]
    if not used[INBOX]:
        return []
    default = settings.SMTP_DAILY_RECIPIENT_LIMIT
    # The inboxes that sent: each by its own limit or its organization's, the nearer.
    inboxes = Inbox.objects.filter(pk__in=list(used[INBOX])).values(
        "pk", "inbox_id", "daily_recipient_limit", "organization_id", "organization__public_id",
        "organization__daily_recipient_limit",
    )  # fmt: skip
    uses = []
    for inbox in inboxes:
        candidates = []
        for scope, limit, count in (
            ("inbox", inbox["daily_recipient_limit"], used[INBOX][inbox["pk"]]),
            (
                "organization",
                inbox["organization__daily_recipient_limit"],
                used[ORGANIZATION][inbox["organization_id"]],
            ),
        ):
            effective = default if limit is None else limit
            if effective and count:  # 0: no limit
                candidates.append(
                    LimitUse(inbox["inbox_id"], inbox["organization__public_id"], scope, count, effective)
                )
        if candidates:
            uses.append(max(candidates, key=lambda use: use.used / use.limit))
    return sorted(uses, key=lambda use: (-use.used / use.limit, use.inbox_id))[:TOP]


def read_overview(now: datetime) -> Overview:
    starts = hour_starts(now)
    since = starts[0]
    by_hour: dict[datetime, dict[str, int]] = {start: dict.fromkeys(OUTCOMES, 0) for start in starts}
    networks: dict[str, int] = {}
    usernames: dict[str, int] = {}
    for summary in auth_summaries(now, starts):
        for hour, counts in summary.hours.items():
            if hour in by_hour:  # not a row from the future (a clock set back)
                by_hour[hour] = counts
        for merged, part in ((networks, summary.networks), (usernames, summary.usernames)):
            for name, failures in part.items():
                merged[name] = merged.get(name, 0) + failures

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
        failing_networks=_top(networks),
        failing_usernames=_top(usernames),
        queue={state: depth.get(state, 0) for state in ("queued", "deferred")},
        oldest_deferred=oldest,
        nearest_limits=nearest_limits(now),
    )
