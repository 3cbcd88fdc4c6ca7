"""Checking SMTP credentials.

* :func:`validate` is the rule: the nine checks in their fixed order, as a plain
  function of the presented credentials and what a lookup found. No ORM.
* :func:`fetch_facts` and :func:`recent_failures` are the database reads it
  needs, done once for a whole batch of attempts (``smtpgateway.checks`` runs
  the batch; ``smtpgateway.commits`` records the attempts).

Whenever both formats are valid, both the key and the inbox are looked up, so an
unknown key, an unknown inbox and a wrong organization cost the same work; and a
failure is answered at a fixed delay after the AUTH began, so the reply time does
not say which check failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable

from django.db import connections
from django.db.models import QuerySet

from apikeys import keys
from apikeys.models import ApiKey
from apikeys.scopes import SMTP_SEND
from inboxes.ids import INBOX_ID_PATTERN
from inboxes.models import Inbox
from smtpgateway.compiled import CompiledRead
from smtpgateway.models import AuthAttempt
from smtpgateway.reasons import Reason

if TYPE_CHECKING:
    from smtpgateway.tls import TlsInfo


@dataclass(frozen=True, slots=True)
class KeyFacts:
    """What validation needs to know about a stored key."""

    id: int
    organization_id: int
    revoked: bool
    expires_at: datetime | None
    scopes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class InboxFacts:
    """What validation and the session need to know about an inbox."""

    id: int
    inbox_id: str
    organization_id: int
    status: str
    email: str


@dataclass(frozen=True, slots=True)
class Outcome:
    reason: Reason
    key: KeyFacts | None = None
    inbox: InboxFacts | None = None

    @property
    def success(self) -> bool:
        return self.reason is Reason.OK


# (inbox_id, key digest) -> what exists for each
Lookup = Callable[[str, str], tuple[KeyFacts | None, InboxFacts | None]]


def validate(username: str, password: str, lookup: Lookup, now: datetime) -> Outcome:
    """Apply the checks in order; the first that fails decides the reason."""
    if INBOX_ID_PATTERN.fullmatch(username) is None:
        return Outcome(Reason.INVALID_INBOX_FORMAT)
    if not keys.is_well_formed(password):
        return Outcome(Reason.INVALID_API_KEY_FORMAT)
    key, inbox = lookup(username, keys.digest_key(password))
    if key is None:
        return Outcome(Reason.API_KEY_NOT_FOUND, inbox=inbox)
    if key.revoked:
        return Outcome(Reason.API_KEY_REVOKED, key, inbox)
    if key.expires_at is not None and key.expires_at <= now:
        return Outcome(Reason.API_KEY_EXPIRED, key, inbox)
    if SMTP_SEND not in key.scopes:
        return Outcome(Reason.INSUFFICIENT_PERMISSIONS, key, inbox)
    if inbox is None:
        return Outcome(Reason.INBOX_NOT_FOUND, key)
    if inbox.status == Inbox.Status.DISABLED:
        return Outcome(Reason.INBOX_DISABLED, key, inbox)
    if inbox.status != Inbox.Status.ACTIVE:
        return Outcome(Reason.INBOX_SUSPENDED, key, inbox)
    if inbox.organization_id != key.organization_id:
        return Outcome(Reason.ORGANIZATION_MISMATCH, key, inbox)
    return Outcome(Reason.OK, key, inbox)


def fetch_facts(digests: set[str], inbox_ids: set[str]) -> tuple[dict[str, KeyFacts], dict[str, InboxFacts]]:
    """The stored keys and inboxes among those asked for: one query for each kind."""
    found_keys: dict[str, KeyFacts] = {}
    found_inboxes: dict[str, InboxFacts] = {}
    if digests:
        rows = ApiKey.objects.filter(digest__in=digests).values_list(
            "digest", "id", "organization_id", "revoked_at", "expires_at", "scopes"
        )
        for digest, key_id, org_id, revoked_at, expires_at, scopes in rows:
            found_keys[digest] = KeyFacts(key_id, org_id, revoked_at is not None, expires_at, tuple(scopes or ()))
    if inbox_ids:
        rows = Inbox.objects.filter(inbox_id__in=inbox_ids).values_list("id", "inbox_id", "organization_id", "status", "email")
        found_inboxes = {row[1]: InboxFacts(*row) for row in rows}
    return found_keys, found_inboxes


def well_formed(username: str, password: str) -> bool:
    return INBOX_ID_PATTERN.fullmatch(username) is not None and keys.is_well_formed(password)


@dataclass(frozen=True, slots=True)
class Peer:
    """Who is asking, as far as the connection tells."""

    session_id: str
    remote_addr: str | None
    remote_port: int | None
    # What the rate limit counts by (smtpgateway.limits.Client.network).
    client_network: str | None
    tls: TlsInfo | None = None


def recent_failures(clients: set[str], since: datetime, enough: int) -> dict[str, set[tuple[str, datetime]]]:
    """Failed credential checks per client (``client_network``) since ``since``,
    each as (session id, time): one query for a whole batch, on the partial index
    of counted failures.
    Enough to compare with a limit of ``enough``: all of a client's, or at least
    its newest ``enough``. Counted in the database, so every gateway process
    sharing it sees the same numbers; returned by identity so that the checker can
    add this process's failures not yet committed without counting one twice.

    The rows read stay few however hard a client attacks: refusals
    (RATE_LIMITED) are not counted failures, so once locked out a client adds
    nothing to the index (lockout ends one window after its last real guess), and
    the checker stops checking credentials for it at the limit."""
    if not clients:
        return {}
    connection = connections[AuthAttempt.objects.db]
    if connection.vendor == "postgresql":
        rows = _newest_failures_postgresql(connection, clients, since, enough)
    else:
        rows = _RECENT_FAILURES.rows((_padded(clients), since))
    failures: dict[str, set[tuple[str, datetime]]] = {}
    for client, session_id, created_at in rows:
        failures.setdefault(client, set()).add((session_id, created_at))
    return failures


# PostgreSQL chooses its plan from statistics, and for "created_at >= since" those
# can be far off: a TRUNCATE keeps the old ones, and a burst of attempts (an
# attack, the benchmark) fills the window long before autoanalyze sees it. It then
# estimated a row or two and scanned the created_at index instead, filtering
# every attempt in the window on each batch: 10 ms at 65,000 rows, growing with
# the attack, measured in the benchmark. Here the window is not in the
# subquery at all (its LIMIT keeps the outer condition out): each client takes
# its newest ``enough`` counted failures from the partial index (client_network,
# created_at), newest first, reading at most that many entries. The only other
# way, walking the created_at index backwards, is costed by how common the
# client is, which the statistics do know, not by a guess at the window.
_NEWEST_FAILURES_POSTGRESQL = """
SELECT asked.client, failure.session_id, failure.created_at
FROM unnest(%s::text[]) AS asked(client)
CROSS JOIN LATERAL (
    SELECT session_id, created_at FROM {table}
    WHERE credential_failure AND client_network = asked.client
    ORDER BY created_at DESC LIMIT %s
) AS failure
WHERE failure.created_at >= %s
""".format(table=AuthAttempt._meta.db_table)


def _newest_failures_postgresql(connection: Any, clients: set[str], since: datetime, enough: int) -> list[tuple[Any, ...]]:
    with connection.cursor() as cursor:
        cursor.execute(_NEWEST_FAILURES_POSTGRESQL, [list(clients), enough, since])
        return cursor.fetchall()


def _padded(clients: set[str]) -> tuple[str, ...]:
    """(SQLite) The clients, padded to the next power of two with addresses of 0.0.0.0/8
    ("this network", never a TCP peer; and any row one matched would be ignored,
    as it was not asked for). The read then comes in nine lengths up to a batch
    of 256, each compiled once, instead of one for every batch size: under load
    new sizes kept turning up, and each first compilation cost ~0.8 ms of the
    checker's time, holding the GIL and the batch's replies. (Hibernate pads its
    IN lists, ``in_clause_parameter_padding``, for the same reason. Padding by
    repeating a client would not do: the ORM drops repeats from an IN list.)"""
    listed = tuple(clients)
    return listed + _PADDING[: (1 << (len(listed) - 1).bit_length()) - len(listed)]


# Made once, not per batch: a list of n clients needs fewer than n of them.
_PADDING = tuple(f"0.0.{number >> 8}.{number & 255}" for number in range(256))


# (clients, since): compiled once per number of clients (smtpgateway.compiled).
FailuresAsked = tuple[tuple[str, ...], datetime]


def _failures_queryset(asked: FailuresAsked) -> QuerySet[AuthAttempt, tuple[str, str, datetime]]:
    clients, since = asked
    return (
        AuthAttempt.objects.filter(credential_failure=True, created_at__gte=since, client_network__in=clients)
        .values_list("client_network", "session_id", "created_at")
        .order_by()
    )


_CREATED_AT = AuthAttempt._meta.get_field("created_at")
_CLIENT_NETWORK = AuthAttempt._meta.get_field("client_network")


def _failures_params(asked: FailuresAsked, connection: Any) -> list[Any]:
    clients, since = asked
    return [  # in the order the ORM puts the conditions: by field name
        *(_CLIENT_NETWORK.get_db_prep_value(client, connection) for client in clients),
        _CREATED_AT.get_db_prep_value(since, connection),
    ]


_RECENT_FAILURES = CompiledRead(AuthAttempt, _failures_queryset, _failures_params, shape=lambda asked: len(asked[0]))
