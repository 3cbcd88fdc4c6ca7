"""The operator's admin: API key issuing, revoking, inbox actions, read-only
audit lists that stay fast with many rows."""

from __future__ import annotations

import html
import re
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from apikeys import keys
from apikeys.models import ApiKey
from inboxes.models import Inbox, Message, Organization
from smtpgateway.models import AuthAttempt

pytestmark = pytest.mark.usefixtures("scenarios")


@pytest.mark.parametrize(
    "model", ["inboxes/organization", "inboxes/inbox", "inboxes/message", "apikeys/apikey", "smtpgateway/authattempt"]
)
def test_changelists_render(admin_client, model: str) -> None:  # type: ignore[no-untyped-def]
    assert admin_client.get(f"/admin/{model}/").status_code == 200


def one_time_token(admin_client) -> str:  # type: ignore[no-untyped-def]
    """The token the add form was served with."""
    page = admin_client.get(reverse("admin:apikeys_apikey_add")).content.decode()
    found = re.search(r'name="one_time_token" value="([^"]+)"', page)
    assert found is not None
    return html.unescape(found.group(1))


def add_key_form(admin_client, name: str = "ci agent") -> dict[str, Any]:  # type: ignore[no-untyped-def]
    org = Organization.objects.get(public_id="org_abc")
    return {
        "organization": org.pk,
        "name": name,
        "scopes": ["smtp:send", "messages:read"],
        "expires_at_0": "",
        "expires_at_1": "",
        "one_time_token": one_time_token(admin_client),
    }


def test_creating_a_key_shows_the_plaintext_once(admin_client, leak_guard, extra_secrets) -> None:  # type: ignore[no-untyped-def]
    response = admin_client.post(reverse("admin:apikeys_apikey_add"), add_key_form(admin_client))
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    shown = re.search(rb'id="api-key-plaintext"[^>]*>(amk_[A-Za-z0-9]+)<', response.content)
    assert shown is not None
    plaintext = shown.group(1).decode()
    extra_secrets.append(plaintext)
    assert keys.is_well_formed(plaintext) and len(plaintext) == 46

    api_key = ApiKey.objects.get(name="ci agent")
    assert api_key.digest == keys.digest_key(plaintext) and api_key.prefix == plaintext[:10]
    assert api_key.scopes == ["smtp:send", "messages:read"]
    # Never again: not on the change page, not in the list, not in a message.
    for url in (reverse("admin:apikeys_apikey_change", args=[api_key.pk]), reverse("admin:apikeys_apikey_changelist")):
        page = admin_client.get(url).content.decode()
        assert plaintext not in page and plaintext[:10] in page


def test_unknown_scopes_are_refused(admin_client) -> None:  # type: ignore[no-untyped-def]
    org = Organization.objects.get(public_id="org_abc")
    response = admin_client.post(reverse("admin:apikeys_apikey_add"), {"organization": org.pk, "scopes": ["root"]})
    assert response.status_code == 200 and b"errorlist" in response.content
    assert not ApiKey.objects.filter(name="").exclude(pk__in=range(1, 6)).exists()


def test_key_list_shows_state_and_revoke_action(admin_client) -> None:  # type: ignore[no-untyped-def]
    page = admin_client.get(reverse("admin:apikeys_apikey_changelist")).content.decode()
    for state in ("Active", "Revoked", "Expired"):
        assert f'<td class="field-state_display">{state}</td>' in page
    valid = ApiKey.objects.get(prefix="am_validke")
    response = admin_client.post(
        reverse("admin:apikeys_apikey_changelist"),
        {"action": "revoke", "_selected_action": [valid.pk], "post": "yes"},
        follow=True,
    )
    assert b"Revoked 1 key(s)." in response.content
    valid.refresh_from_db()
    assert valid.revoked_at is not None and valid.state() == ApiKey.State.REVOKED


@pytest.mark.parametrize(
    ("state", "prefixes"),
    [
        ("active", {"am_validke", "am_wrongor", "am_noscope", "am_limited"}),
        ("revoked", {"am_revoked"}),
        ("expired", {"am_expired"}),
    ],
)
def test_key_state_filter(admin_client, state: str, prefixes: set[str]) -> None:  # type: ignore[no-untyped-def]
    response = admin_client.get(reverse("admin:apikeys_apikey_changelist"), {"state": state})
    shown = {key.prefix for key in response.context["cl"].result_list}
    assert shown == prefixes


@pytest.mark.parametrize(
    ("action", "status"), [("make_disabled", "disabled"), ("make_suspended", "suspended"), ("make_active", "active")]
)
def test_inbox_status_actions(admin_client, action: str, status: str) -> None:  # type: ignore[no-untyped-def]
    inbox = Inbox.objects.get(inbox_id="inb_disabled456789012")
    admin_client.post(reverse("admin:inboxes_inbox_changelist"), {"action": action, "_selected_action": [inbox.pk]})
    inbox.refresh_from_db()
    assert inbox.status == status


@pytest.mark.parametrize("model", ["smtpgateway_authattempt", "inboxes_message"])
def test_audit_models_are_read_only(admin_client, model: str) -> None:  # type: ignore[no-untyped-def]
    add_url = reverse(f"admin:{model}_add")
    assert admin_client.get(add_url).status_code == 403
    assert add_url.encode() not in admin_client.get(reverse(f"admin:{model}_changelist")).content


def make_history(rows: int) -> None:
    inbox = Inbox.objects.get(inbox_id="inb_valid1234567890")
    key = ApiKey.objects.get(prefix="am_validke")
    now = timezone.now()
    AuthAttempt.objects.bulk_create(
        AuthAttempt(
            created_at=now - timedelta(seconds=n),
            remote_addr="127.0.0.1",
            remote_port=1000 + n,
            session_id=f"s{n}",
            mechanism="PLAIN",
            username=inbox.inbox_id,
            key_prefix=key.prefix,
            success=n % 2 == 0,
            reason="OK" if n % 2 == 0 else "API_KEY_NOT_FOUND",
            inbox=inbox,
            api_key=key,
            organization=inbox.organization,
        )
        for n in range(rows)
    )
    Message.objects.bulk_create(
        Message(
            queue_id=f"Q{n}",
            inbox=inbox,
            envelope_from=inbox.email,
            envelope_to=["a@example.com"],
            size=10,
            raw=b"x" * 10,
        )
        for n in range(rows)
    )


@pytest.mark.parametrize(
    "url_name",
    [
        "smtpgateway_authattempt_changelist",
        "inboxes_message_changelist",
        "apikeys_apikey_changelist",
        "inboxes_inbox_changelist",
        "inboxes_organization_changelist",
    ],
)
def test_lists_use_a_constant_number_of_queries(admin_client, url_name: str) -> None:  # type: ignore[no-untyped-def]
    url = reverse(f"admin:{url_name}")
    make_history(5)
    with CaptureQueriesContext(connection) as few:
        assert admin_client.get(url).status_code == 200
    AuthAttempt.objects.all().delete()
    Message.objects.all().delete()
    make_history(300)
    with CaptureQueriesContext(connection) as many:
        assert admin_client.get(url).status_code == 200
    assert len(many) == len(few), [q["sql"][:120] for q in many.captured_queries]


def test_message_list_does_not_load_bodies(admin_client) -> None:  # type: ignore[no-untyped-def]
    make_history(3)
    with CaptureQueriesContext(connection) as queries:
        admin_client.get(reverse("admin:inboxes_message_changelist"))
    listing = [
        q["sql"] for q in queries.captured_queries if 'FROM "inboxes_message"' in q["sql"] and "COUNT" not in q["sql"]
    ]
    assert listing and all('"inboxes_message"."raw"' not in sql for sql in listing)


def test_message_detail_shows_raw_message(admin_client) -> None:  # type: ignore[no-untyped-def]
    make_history(1)
    message = Message.objects.get()
    page = admin_client.get(reverse("admin:inboxes_message_change", args=[message.pk])).content.decode()
    assert "xxxxxxxxxx" in page and message.queue_id in page


def test_attempt_filters_list_known_values_not_what_clients_sent(admin_client) -> None:  # type: ignore[no-untyped-def]
    """Mechanism names are the client's to choose: the sidebar lists PLAIN, LOGIN
    and "other", never what clients sent."""
    now = timezone.now()
    AuthAttempt.objects.bulk_create(
        AuthAttempt(
            created_at=now,
            session_id=f"s{n}",
            mechanism=mechanism,
            tls_version=tls,
            success=False,
            reason="UNSUPPORTED_MECHANISM",
        )
        for n, (mechanism, tls) in enumerate(
            [("PLAIN", "TLSv1.3"), ("LOGIN", ""), ("JUNK-NAME-1", ""), ("X\\x00Y", "TLSv1.2")]
        )
    )
    url = reverse("admin:smtpgateway_authattempt_changelist")
    page = admin_client.get(url).content.decode()
    assert "JUNK-NAME-1" in page  # in the list itself...
    assert "?mechanism=other" in page and "mechanism=JUNK" not in page  # ...not as a filter
    shown = {
        query: {row.session_id for row in admin_client.get(f"{url}?{query}").context["cl"].result_list}
        for query in ("mechanism=PLAIN", "mechanism=other", "tls_version=plaintext", "tls_version=TLSv1.2")
    }
    assert shown == {
        "mechanism=PLAIN": {"s0"},
        "mechanism=other": {"s2", "s3"},
        "tls_version=plaintext": {"s1", "s2"},
        "tls_version=TLSv1.2": {"s3"},
    }


@pytest.mark.parametrize("url_name", ["smtpgateway_authattempt_changelist", "inboxes_message_changelist"])
def test_audit_lists_read_no_more_than_a_page(admin_client, url_name: str) -> None:  # type: ignore[no-untyped-def]
    """No SELECT DISTINCT over the table (a date hierarchy's or an all-values
    filter's: each ~0.3–0.5 s at 2 million rows); the date filter is a range."""
    make_history(30)
    url = reverse(f"admin:{url_name}")
    table = "smtpgateway_authattempt" if "authattempt" in url_name else "inboxes_message"
    page = admin_client.get(url).content.decode()
    link = re.search(r'href="(\?created_at__gte=[^"]*)"[^>]*>Past 7 days<', page)
    assert link is not None
    past_week = html.unescape(link.group(1))
    for query in ("", past_week):
        with CaptureQueriesContext(connection) as queries:
            response = admin_client.get(url + query)
        assert response.status_code == 200 and len(response.context["cl"].result_list) == 30
        assert not [q["sql"] for q in queries.captured_queries if "DISTINCT" in q["sql"] and table in q["sql"]]


@pytest.mark.parametrize(
    "url_name, query",
    [
        ("smtpgateway_authattempt_changelist", "remote_addr=%00"),
        ("smtpgateway_authattempt_changelist", "remote_addr=not-an-address"),
        ("smtpgateway_authattempt_changelist", "remote_addr__in=127.0.0.1,x"),
        ("smtpgateway_authattempt_changelist", "username=a%00b"),
        ("smtpgateway_authattempt_changelist", "session_id=%00"),
        ("inboxes_inbox_changelist", "status=%00"),
        ("inboxes_message_changelist", "status=%00"),
        ("apikeys_apikey_changelist", "name=%00"),
        ("inboxes_organization_changelist", "name=%00"),
    ],
)
def test_a_malformed_filter_is_an_invalid_lookup_not_a_server_error(admin_client, url_name: str, query: str) -> None:  # type: ignore[no-untyped-def]
    """Values that pass Django's admin but fail in PostgreSQL's driver (a NUL,
    a non-address for the inet column) get Django's invalid-lookup redirect on
    both databases; they were a 500 on PostgreSQL."""
    url = reverse(f"admin:{url_name}")
    response = admin_client.get(f"{url}?{query}")
    assert (response.status_code, response.headers.get("Location")) == (302, f"{url}?e=1")


@pytest.mark.parametrize("query", ["username__regex=(a", "reason__iregex=.*"])
def test_regex_filters_are_refused(admin_client, query: str) -> None:  # type: ignore[no-untyped-def]
    assert admin_client.get(f"{reverse('admin:smtpgateway_authattempt_changelist')}?{query}").status_code == 400


def test_address_filters_still_work(admin_client) -> None:  # type: ignore[no-untyped-def]
    make_history(3)
    AuthAttempt.objects.filter(session_id="s1").update(remote_addr="2001:db8::1")
    url = reverse("admin:smtpgateway_authattempt_changelist")
    shown = {
        query: {row.session_id for row in admin_client.get(f"{url}?{query}").context["cl"].result_list}
        for query in (
            "remote_addr=127.0.0.1",
            "remote_addr__in=2001:db8::1,192.0.2.1",
            "remote_addr__startswith=2001",
            "q=db8",
        )
    }
    assert shown == {
        "remote_addr=127.0.0.1": {"s0", "s2"},
        "remote_addr__in=2001:db8::1,192.0.2.1": {"s1"},
        "remote_addr__startswith=2001": {"s1"},
        "q=db8": {"s1"},
    }


def test_foreign_key_reads_use_the_partial_indexes(admin_client) -> None:  # type: ignore[no-untyped-def]
    """AuthAttempt's foreign-key indexes leave out NULL (most failed attempts have
    no inbox, key or organization). What reads through them still finds them: the
    admin's organization filter, and deleting an inbox or key (SET_NULL). For the
    filter it is the changelist's count that must read through the index: its page
    of rows may walk the created_at index newest-first instead, which the planner
    picks when the organization holds most rows (as it does here, once analyzed)."""
    make_history(3)
    Message.objects.all().delete()  # they protect the inbox
    statements: list[tuple[str, tuple[Any, ...]]] = []

    def capture(execute, sql, params, many, context):  # type: ignore[no-untyped-def]
        if "smtpgateway_authattempt" in sql and sql.startswith(("SELECT COUNT", "UPDATE")):
            statements.append((sql, tuple(params or ())))
        return execute(sql, params, many, context)

    organization = Organization.objects.get(public_id="org_abc")
    with connection.execute_wrapper(capture):
        admin_client.get(
            f"{reverse('admin:smtpgateway_authattempt_changelist')}?organization__id__exact={organization.pk}"
        )
        ApiKey.objects.get(prefix="am_validke").delete()
        Inbox.objects.get(inbox_id="inb_valid1234567890").delete()
    readers = {"authattempt_organization": "SELECT", "authattempt_api_key": "UPDATE", "authattempt_inbox": "UPDATE"}
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # Three rows: a scan would be cheaper. For the session, not SET LOCAL,
            # which does nothing when the test's connection is in autocommit.
            cursor.execute("SET enable_seqscan = off")
            # The plan must not hang on statistics an earlier test left (or none).
            cursor.execute("ANALYZE smtpgateway_authattempt")
        try:
            for index, verb in readers.items():
                column = index.removeprefix("authattempt_") + "_id"
                sql, params = next(
                    (sql, params)
                    for sql, params in statements
                    if sql.startswith(verb) and (f'"{column}" IN' in sql or f'"{column}" =' in sql)
                )
                cursor.execute(("EXPLAIN QUERY PLAN " if connection.vendor == "sqlite" else "EXPLAIN ") + sql, params)
                plan = " ".join(str(row[-1]) for row in cursor.fetchall())
                assert index in plan and "Seq Scan" not in plan, (sql, plan)
        finally:
            if connection.vendor == "postgresql":
                cursor.execute("RESET enable_seqscan")
    assert not AuthAttempt.objects.filter(inbox__isnull=False).exists()  # the deletes did their work


def test_a_key_is_limited_to_inboxes_of_its_own_organization(admin_client, leak_guard, extra_secrets) -> None:  # type: ignore[no-untyped-def]
    org = Organization.objects.get(public_id="org_abc")
    own = Inbox.objects.get(inbox_id="inb_other12345678901")
    foreign = Inbox.objects.create(
        inbox_id="inb_xyzinbox12345678", organization=Organization.objects.get(public_id="org_xyz"), email="x@xyz.test"
    )
    form = {"organization": org.pk, "name": "limited", "scopes": ["smtp:send"], "expires_at_0": "", "expires_at_1": ""}
    form["one_time_token"] = one_time_token(admin_client)  # kept by a form refused for its inboxes
    refused = admin_client.post(reverse("admin:apikeys_apikey_add"), {**form, "inboxes": [foreign.pk]})
    assert refused.status_code == 200 and "Not inboxes of org_abc: inb_xyzinbox12345678" in refused.content.decode()
    assert not ApiKey.objects.filter(name="limited").exists()
    created = admin_client.post(reverse("admin:apikeys_apikey_add"), {**form, "inboxes": [own.pk]})
    shown = re.search(rb'id="api-key-plaintext"[^>]*>(amk_[A-Za-z0-9]+)<', created.content)
    assert shown is not None
    extra_secrets.append(shown.group(1).decode())
    api_key = ApiKey.objects.get(name="limited")
    assert list(api_key.inboxes.all()) == [own]
    change = admin_client.get(reverse("admin:apikeys_apikey_change", args=[api_key.pk])).content.decode()
    assert "inb_other12345678901" in change and "inb_xyzinbox12345678" not in change  # only its organization's
