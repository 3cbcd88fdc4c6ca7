"""The database reads the AUTH checks need, each done once for a whole batch of
attempts (``smtpgateway.auth.checker`` runs the batch): the stored keys and
inboxes asked for, and the recent counted failures per client.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django.db import connections
from django.db.models import Q, QuerySet
from django.db.models.functions import Lower

from apikeys.models import ApiKey
from inboxes.ids import address_key
from inboxes.models import Inbox
from smtpgateway.auth.rules import InboxFacts, KeyFacts
from smtpgateway.models import AuthAttempt
from smtpgateway.storage.compiled import CompiledRead


def fetch_facts(digests: set[str], inbox_names: set[str]) -> tuple[dict[str, KeyFacts], dict[str, InboxFacts]]:
    """The stored keys and inboxes among those asked for: one query for the keys
    (and one for the inboxes the found keys are limited to), one for the inboxes.
    ``inbox_names`` are ``inboxes.ids.inbox_lookup_name`` values: ids and
    addresses, found by the same query (an address by its lower-cased form, on
    an index of it; its local part then compared as stored)."""
    found_keys: dict[str, KeyFacts] = {}
    found_inboxes: dict[str, InboxFacts] = {}
    if digests:
        key_rows = list(
            ApiKey.objects.filter(digest__in=digests).values_list(
                "digest", "id", "organization_id", "revoked_at", "expires_at", "scopes"
            )
        )
        limits: dict[int, set[int]] = {}
        if key_rows:
            allowed = ApiKey.inboxes.through.objects.filter(apikey_id__in=[row[1] for row in key_rows])
            for key_id, inbox_pk in allowed.values_list("apikey_id", "inbox_id"):
                limits.setdefault(key_id, set()).add(inbox_pk)
        for digest, key_id, org_id, revoked_at, expires_at, scopes in key_rows:
            found_keys[digest] = KeyFacts(
                key_id,
                org_id,
                revoked_at is not None,
                expires_at,
                tuple(scopes or ()),
                frozenset(limits.get(key_id, ())),
            )
    if inbox_names:
        ids = [name for name in inbox_names if "@" not in name]
        addresses = [name for name in inbox_names if "@" in name]
        wanted = Q(inbox_id__in=ids) | Q(email_lower__in=[address.lower() for address in addresses])
        inbox_rows = (
            Inbox.objects.annotate(email_lower=Lower("email"))
            .filter(wanted)
            .values_list(
                "id",
                "inbox_id",
                "organization_id",
                "status",
                "email",
                "daily_recipient_limit",
                "organization__daily_recipient_limit",
            )
        )
        for row in inbox_rows:
            facts = InboxFacts(*row)
            if facts.inbox_id in inbox_names:
                found_inboxes[facts.inbox_id] = facts
            address = address_key(facts.email)
            if address in inbox_names:
                found_inboxes[address] = facts
    return found_keys, found_inboxes


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
    rows: Iterable[tuple[Any, ...]]
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
# every attempt in the window on each batch, a cost that grows with the attack
# (docs/performance.md). Here the window is not in the
# subquery at all (its LIMIT keeps the outer condition out): each client takes
# its newest ``enough`` counted failures from the partial index (client_network,
# created_at), newest first, reading at most that many entries. The only other
# way, walking the created_at index backwards, is costed by how common the
# client is, which the statistics do know, not by a guess at the window.
_NEWEST_FAILURES_POSTGRESQL = f"""
SELECT asked.client, failure.session_id, failure.created_at
FROM unnest(%s::text[]) AS asked(client)
CROSS JOIN LATERAL (
    SELECT session_id, created_at FROM {AuthAttempt._meta.db_table}
    WHERE credential_failure AND client_network = asked.client
    ORDER BY created_at DESC LIMIT %s
) AS failure
WHERE failure.created_at >= %s
"""


def _newest_failures_postgresql(
    connection: Any, clients: set[str], since: datetime, enough: int
) -> list[tuple[Any, ...]]:
    with connection.cursor() as cursor:
        cursor.execute(_NEWEST_FAILURES_POSTGRESQL, [list(clients), enough, since])
        rows: list[tuple[Any, ...]] = cursor.fetchall()
        return rows


def _padded(clients: set[str]) -> tuple[str, ...]:
    """(SQLite) The clients, padded to the next power of two with addresses of 0.0.0.0/8
    ("this network", never a TCP peer; and any row one matched would be ignored,
    as it was not asked for). The read then comes in nine lengths up to a batch
    of 256, each compiled once, instead of one for every batch size: under load
    new sizes kept turning up, and each first compilation held the checker
    (and the GIL, and the batch's replies) far longer than the read itself. (Hibernate pads its
    IN lists, ``in_clause_parameter_padding``, for the same reason. Padding by
    repeating a client would not do: the ORM drops repeats from an IN list.)"""
    listed = tuple(clients)
    return listed + _PADDING[: (1 << (len(listed) - 1).bit_length()) - len(listed)]


# Made once, not per batch: a list of n clients needs fewer than n of them.
_PADDING = tuple(f"0.0.{number >> 8}.{number & 255}" for number in range(256))


# (clients, since): compiled once per number of clients (smtpgateway.storage.compiled).
FailuresAsked = tuple[tuple[str, ...], datetime]


def _failures_queryset(asked: FailuresAsked) -> QuerySet[AuthAttempt, tuple[str | None, str, datetime]]:
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
