"""The admin as an operator's tool (issue 24), through Django's test client: one
key per add form, a history entry for every action, fixed SMTP usernames,
times to the second, readable reasons and messages, links between records."""

from __future__ import annotations

import html
import json
import logging
import re
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any

import pytest
from django.conf import settings
from django.contrib.admin.models import CHANGE, LogEntry
from django.urls import reverse
from django.utils import timezone

from apikeys.models import ApiKey
from delivery.models import Recipient
from inboxes.models import Inbox, Message, Organization
from smtpgateway.models import AuthAttempt
from smtpgateway.runtime.logformat import JsonFormatter
from tests.helpers import DEMO_KEYS, VALID_INBOX, secret_markers
from tests.unit.test_admin import add_key_form, make_history

pytestmark = pytest.mark.usefixtures("scenarios")

ADD_KEY = "admin:apikeys_apikey_add"
ATTEMPTS = "admin:smtpgateway_authattempt_changelist"
PLAINTEXT = re.compile(rb'id="api-key-plaintext"[^>]*>(amk?_[A-Za-z0-9]+)<')


def history(obj: Any) -> list[str]:
    """The change messages in ``obj``'s admin history, oldest first."""
    entries = LogEntry.objects.filter(object_id=str(obj.pk), content_type__model=obj._meta.model_name)
    return [entry.get_change_message() for entry in entries.order_by("action_time", "pk")]


# --- one key per add form ---------------------------------------------------------


def test_sending_the_add_form_again_creates_no_second_key(admin_client, leak_guard, extra_secrets) -> None:  # type: ignore[no-untyped-def]
    """A reload of the "API key created" page posts the same form again."""
    form = add_key_form(admin_client, name="reloaded")
    first = admin_client.post(reverse(ADD_KEY), form)
    shown = PLAINTEXT.search(first.content)
    assert shown is not None
    extra_secrets.append(shown.group(1).decode())
    again = admin_client.post(reverse(ADD_KEY), form)
    assert again.status_code == 200 and "no-store" in again["Cache-Control"]
    assert ApiKey.objects.filter(name="reloaded").count() == 1
    page = again.content.decode()
    assert "This form was sent before, and it created the key" in page
    assert not re.search(r"amk?_[A-Za-z0-9]{30,}", page), "the second answer shows a key"
    key = ApiKey.objects.get(name="reloaded")
    assert reverse("admin:apikeys_apikey_change", args=[key.pk]) in page


@pytest.mark.parametrize("token", [None, "", "forged-token", "abc:def"])
def test_a_form_without_a_token_this_admin_issued_creates_nothing(admin_client, token: str | None) -> None:  # type: ignore[no-untyped-def]
    form = add_key_form(admin_client, name="forged")
    if token is None:
        del form["one_time_token"]
    else:
        form["one_time_token"] = token
    response = admin_client.post(reverse(ADD_KEY), form)
    assert response.status_code == 200 and b"errorlist" in response.content
    assert not ApiKey.objects.filter(name="forged").exists()


def test_each_add_form_gets_its_own_token(admin_client) -> None:  # type: ignore[no-untyped-def]
    first, second = add_key_form(admin_client, "one"), add_key_form(admin_client, "two")
    assert first["one_time_token"] != second["one_time_token"]
    for form in (first, second):
        assert PLAINTEXT.search(admin_client.post(reverse(ADD_KEY), form).content)
    assert ApiKey.objects.filter(name__in=["one", "two"]).count() == 2


# --- every action leaves a trace ------------------------------------------------------


def test_revoking_asks_first(admin_client) -> None:  # type: ignore[no-untyped-def]
    valid, revoked = ApiKey.objects.get(prefix="am_validke"), ApiKey.objects.get(prefix="am_revoked")
    url = reverse("admin:apikeys_apikey_changelist")
    page = admin_client.post(url, {"action": "revoke", "_selected_action": [valid.pk, revoked.pk]})
    assert page.status_code == 200
    text = page.content.decode()
    assert "Revoke these API keys? This cannot be undone" in text
    assert 'name="post" value="yes"' in text and "Yes, revoke 1 key" in text
    assert "Already revoked" in text
    valid.refresh_from_db()
    assert valid.revoked_at is None and not LogEntry.objects.exists()
    admin_client.post(url, {"action": "revoke", "_selected_action": [valid.pk, revoked.pk], "post": "yes"})
    valid.refresh_from_db()
    assert valid.revoked_at is not None
    assert history(valid) == [f"Revoked at {valid.revoked_at:%Y-%m-%d %H:%M:%S} UTC (was active)."]
    assert history(revoked) == []  # nothing changed there


@pytest.mark.parametrize(
    ("action", "status"), [("make_disabled", "disabled"), ("make_suspended", "suspended"), ("make_active", "active")]
)
def test_inbox_actions_write_history(admin_client, action: str, status: str) -> None:  # type: ignore[no-untyped-def]
    inboxes = list(Inbox.objects.all())
    before = {inbox.inbox_id: Inbox.Status(inbox.status).label for inbox in inboxes}
    changed = {inbox_id: label for inbox_id, label in before.items() if label.lower() != status}
    assert changed and len(changed) < len(before)  # the demo data has inboxes of every status
    admin_client.post(
        reverse("admin:inboxes_inbox_changelist"),
        {"action": action, "_selected_action": [inbox.pk for inbox in inboxes]},
    )
    label = status.capitalize()
    for inbox in inboxes:
        inbox.refresh_from_db()
        assert inbox.status == status
        expected = [f"Status: {changed[inbox.inbox_id]} → {label}."] if inbox.inbox_id in changed else []
        assert history(inbox) == expected, inbox.inbox_id
    entry = LogEntry.objects.filter(action_flag=CHANGE).first()
    assert entry is not None and str(entry.user) == "admin"
    # What the operator sees: the object's History page and "Recent actions".
    some = Inbox.objects.get(inbox_id=next(iter(changed)))
    page = admin_client.get(reverse("admin:inboxes_inbox_history", args=[some.pk])).content.decode()
    assert html.escape(f"Status: {changed[some.inbox_id]} → {label}.") in page
    assert some.inbox_id in admin_client.get(reverse("admin:index")).content.decode()


def queued_message(queue_id: str, recipients: list[str]) -> Message:
    inbox = Inbox.objects.get(inbox_id=VALID_INBOX)
    message = Message.objects.create(
        queue_id=queue_id, inbox=inbox, envelope_from=inbox.email, envelope_to=recipients, size=3, raw=b"x\r\n"
    )
    Recipient.objects.bulk_create(
        Recipient(message=message, address=address, next_attempt_at=timezone.now() + timedelta(hours=1))
        for address in recipients
    )
    return message


@pytest.mark.parametrize(
    ("action", "says"),
    [("retry_now", "Retry now: {} due at once."), ("cancel_delivery", "Delivery cancelled (no DSN) to {}.")],
)
def test_delivery_actions_write_history(admin_client, action: str, says: str) -> None:  # type: ignore[no-untyped-def]
    first = queued_message("QFIRST", ["a@example.com", "b@example.com"])
    second = queued_message("QSECOND", ["c@example.com"])
    Recipient.objects.filter(address="b@example.com").update(status="delivered")
    admin_client.post(
        reverse("admin:inboxes_message_changelist"), {"action": action, "_selected_action": [first.pk, second.pk]}
    )
    assert history(first) == [says.format("a@example.com")]
    assert history(second) == [says.format("c@example.com")]


# --- the SMTP username and the organization's id stay put --------------------------------


@pytest.mark.parametrize(
    ("model", "url_name", "lookup", "field", "value"),
    [
        (Inbox, "admin:inboxes_inbox_change", {"inbox_id": VALID_INBOX}, "inbox_id", "inb_renamed000000000"),
        (Organization, "admin:inboxes_organization_change", {"public_id": "org_abc"}, "public_id", "org_renamed"),
    ],
)
def test_ids_in_use_are_read_only_on_change(  # type: ignore[no-untyped-def]
    admin_client, model: type[Inbox | Organization], url_name: str, lookup: dict[str, str], field: str, value: str
) -> None:
    obj = model.objects.get(**lookup)
    url = reverse(url_name, args=[obj.pk])
    page = admin_client.get(url).content.decode()
    assert f'name="{field}"' not in page and lookup[field] in page
    form = {"name": "renamed", "email": "test@agentmail.dev", "status": "active", field: value}
    admin_client.post(url, form)
    assert model.objects.filter(**lookup).exists() and not model.objects.filter(**{field: value}).exists()
    add_page = admin_client.get(reverse(url_name.replace("_change", "_add"))).content.decode()
    assert f'name="{field}"' in add_page  # set once, when it is made


# --- times ---------------------------------------------------------------------------------


def test_times_show_seconds_and_zone_as_the_log_lines_do(admin_client) -> None:  # type: ignore[no-untyped-def]
    when = datetime(2026, 3, 4, 5, 6, 7, 890000, tzinfo=UTC)
    make_history(1)
    AuthAttempt.objects.update(created_at=when)
    Message.objects.update(created_at=when)
    ApiKey.objects.filter(prefix="am_validke").update(last_used_at=when)
    shown = "2026-03-04 05:06:07 UTC"
    attempt, message = AuthAttempt.objects.get(), Message.objects.get()
    key = ApiKey.objects.get(prefix="am_validke")
    for url in (
        reverse(ATTEMPTS),
        reverse("admin:smtpgateway_authattempt_change", args=[attempt.pk]),
        reverse("admin:inboxes_message_changelist"),
        reverse("admin:inboxes_message_change", args=[message.pk]),
        reverse("admin:apikeys_apikey_changelist"),
        reverse("admin:apikeys_apikey_change", args=[key.pk]),
    ):
        assert shown in admin_client.get(url).content.decode(), url
    # A log line written at that moment, in each of the project's log formats.
    human = logging.Formatter(settings.LOGGING["formatters"]["human"]["format"])  # type: ignore[index]
    record = logging.makeLogRecord({"msg": "x", "levelname": "INFO", "name": "smtpgateway"})
    record.created, record.msecs = when.timestamp(), 890.0
    assert human.format(record).startswith(shown.removesuffix(" UTC") + ",890 ")
    assert json.loads(JsonFormatter().format(record))["time"] == "2026-03-04T05:06:07.890Z"


# --- the AUTH attempts list -----------------------------------------------------------------


def test_attempt_list_reads_as_words_and_fits(admin_client) -> None:  # type: ignore[no-untyped-def]
    make_history(4)
    AuthAttempt.objects.filter(session_id="s1").update(reason="API_KEY_REVOKED", tls_version="TLSv1.3", encrypted=True)
    response = admin_client.get(reverse(ATTEMPTS))
    page = response.content.decode()
    headers = re.findall(r'<th scope="col" class="[^"]*column-(\w+)', page)
    assert headers == ["time", "outcome", "reason_display", "username", "client", "mechanism", "tls", "key"]
    assert '<span title="API_KEY_REVOKED">API key revoked</span>' in page
    assert '<span title="API_KEY_NOT_FOUND">API key not found</span>' in page
    tls_cells = re.findall(r'<td class="field-tls">(.*?)</td>', page)
    assert sorted(set(tls_cells)) == ["TLSv1.3", "plaintext"]  # words, no icon
    assert "?reason=API_KEY_REVOKED" in page  # the sidebar filters by code...
    assert ">API key revoked</a>" in page  # ...named in words


@pytest.mark.parametrize(
    ("query", "sessions"),
    [
        ("reason=API_KEY_REVOKED", {"s1"}),
        ("q=API_KEY_REVOKED", {"s1"}),
        ("q=api_key_revoked", {"s1"}),
        ("remote_addr=192.0.2.7", {"s2"}),
        ("api_key={key}", {"s0", "s1", "s2"}),
        ("api_key=999999", set()),
    ],
)
def test_attempt_filters(admin_client, query: str, sessions: set[str]) -> None:  # type: ignore[no-untyped-def]
    make_history(4)
    AuthAttempt.objects.filter(session_id="s1").update(reason="API_KEY_REVOKED")
    AuthAttempt.objects.filter(session_id="s2").update(remote_addr="192.0.2.7")
    AuthAttempt.objects.filter(session_id="s3").update(api_key=None)
    key = ApiKey.objects.get(prefix="am_validke")
    response = admin_client.get(f"{reverse(ATTEMPTS)}?{query.format(key=key.pk)}")
    assert {row.session_id for row in response.context["cl"].result_list} == sessions


def test_the_api_key_filter_lists_recently_used_keys_and_the_chosen_one(admin_client) -> None:  # type: ignore[no-untyped-def]
    used = ApiKey.objects.get(prefix="am_validke")
    unused = ApiKey.objects.get(prefix="am_noscope")
    ApiKey.objects.filter(pk=used.pk).update(last_used_at=timezone.now())
    page = admin_client.get(reverse(ATTEMPTS)).content.decode()
    assert f"?api_key={used.pk}" in page and f"?api_key={unused.pk}" not in page
    chosen = admin_client.get(f"{reverse(ATTEMPTS)}?api_key={unused.pk}").content.decode()
    assert f"?api_key={unused.pk}" in chosen


def test_attempt_detail_names_and_links(admin_client) -> None:  # type: ignore[no-untyped-def]
    make_history(1)
    attempt = AuthAttempt.objects.get()
    AuthAttempt.objects.update(credential_failure=True, success=False, reason="API_KEY_REVOKED")
    page = admin_client.get(reverse("admin:smtpgateway_authattempt_change", args=[attempt.pk])).content.decode()
    for label in ("TLS version", "API key", "Client address", "Credential failure"):
        assert f"<label>{label}:</label>" in page, label
    assert "yes: a failed credential check, counted by the per-address AUTH rate limit" in page
    assert "icon-yes.svg" not in page.split("Credential failure")[1][:300]
    assert reverse("admin:apikeys_apikey_change", args=[attempt.api_key_id]) in page
    assert reverse("admin:inboxes_inbox_change", args=[attempt.inbox_id]) in page
    assert "none: the AUTH failed" in page


def test_app_sections_are_named_for_operators(admin_client) -> None:  # type: ignore[no-untyped-def]
    page = admin_client.get(reverse("admin:index")).content.decode()
    for name in ("API keys", "Inboxes", "SMTP gateway"):
        assert f'title="Models in the {name} application">{name}</a>' in page, name


# --- messages ----------------------------------------------------------------------------


def stored_message(body_bytes: int = 3000, attachment: bytes = b"%PDF-1.4 tiny") -> Message:
    mail = EmailMessage()
    mail["From"], mail["To"], mail["Subject"] = "test@agentmail.dev", "a@example.com", "=?utf-8?q?Gr=C3=BC=C3=9Fe?="
    mail.set_content("Hello,\n" + "body line\n" * (body_bytes // 10))
    mail.add_attachment(attachment, maintype="application", subtype="pdf", filename="report.pdf")
    raw = mail.as_bytes().replace(b"\n", b"\r\n")
    inbox = Inbox.objects.get(inbox_id=VALID_INBOX)
    return Message.objects.create(
        queue_id="QMAIL1",
        inbox=inbox,
        envelope_from=inbox.email,
        envelope_to=["a@example.com", "b@example.org"],
        size=len(raw),
        subject="Grüße",
        raw=raw,
        session_id="s0",
    )


def test_message_detail_reads_as_mail(admin_client) -> None:  # type: ignore[no-untyped-def]
    message = stored_message(attachment=b"%PDF" + b"x" * 5000)
    page = admin_client.get(reverse("admin:inboxes_message_change", args=[message.pk])).content.decode()
    assert "a@example.com<br>b@example.org" in page and '["a@example.com"' not in page
    assert "<tr><th>Subject</th><td>Grüße</td></tr>" in page
    assert "<td>2</td><td>application/pdf</td><td>4.9 KiB</td><td>report.pdf</td>" in page
    assert "<td>1</td><td>text/plain</td>" in page
    assert "Hello," in page and "body line" in page
    assert 'id="download-eml"' in page and "QMAIL1.eml" in page


def test_a_large_message_makes_a_small_page(admin_client) -> None:  # type: ignore[no-untyped-def]
    message = stored_message(body_bytes=3_000_000, attachment=b"\0" * 4_000_000)
    assert message.size > 7_000_000
    page = admin_client.get(reverse("admin:inboxes_message_change", args=[message.pk])).content
    assert len(page) < 100_000, len(page)
    assert b"the rest is in the .eml" in page


def test_the_raw_message_downloads_as_eml(admin_client) -> None:  # type: ignore[no-untyped-def]
    message = stored_message()
    response = admin_client.get(reverse("admin:inboxes_message_eml", args=[message.pk]))
    assert response.status_code == 200 and response["Content-Type"] == "message/rfc822"
    assert response["Content-Disposition"] == 'attachment; filename="QMAIL1.eml"'
    assert response.content == bytes(message.raw)
    admin_client.logout()
    assert admin_client.get(reverse("admin:inboxes_message_eml", args=[message.pk])).status_code == 302  # to log in


# --- links between records ------------------------------------------------------------------


def test_a_message_links_to_the_auth_and_key_that_submitted_it_and_back(admin_client) -> None:  # type: ignore[no-untyped-def]
    make_history(1)  # session s0: a successful AUTH with the valid key, a minute ago at most
    attempt = AuthAttempt.objects.get(session_id="s0")
    Message.objects.all().delete()
    message = stored_message()
    page = admin_client.get(reverse("admin:inboxes_message_change", args=[message.pk])).content.decode()
    assert reverse("admin:smtpgateway_authattempt_change", args=[attempt.pk]) in page
    assert reverse("admin:apikeys_apikey_change", args=[attempt.api_key_id]) in page
    back = admin_client.get(reverse("admin:smtpgateway_authattempt_change", args=[attempt.pk])).content.decode()
    assert reverse("admin:inboxes_message_change", args=[message.pk]) in back and "Grüße" in back


def test_keys_inboxes_and_organizations_link_to_their_records(admin_client) -> None:  # type: ignore[no-untyped-def]
    key = ApiKey.objects.get(prefix="am_validke")
    inbox = Inbox.objects.get(inbox_id=VALID_INBOX)
    org = inbox.organization
    key_page = admin_client.get(reverse("admin:apikeys_apikey_change", args=[key.pk])).content.decode()
    assert f"{reverse(ATTEMPTS)}?api_key={key.pk}" in key_page
    inbox_page = admin_client.get(reverse("admin:inboxes_inbox_change", args=[inbox.pk])).content.decode()
    assert f"{reverse('admin:inboxes_message_changelist')}?inbox__id__exact={inbox.pk}" in inbox_page
    assert f"{reverse(ATTEMPTS)}?inbox__id__exact={inbox.pk}" in inbox_page
    assert f"{reverse('admin:apikeys_apikey_changelist')}?organization__id__exact={org.pk}" in inbox_page
    inboxes, keys = Inbox.objects.filter(organization=org).count(), ApiKey.objects.filter(organization=org).count()
    assert inboxes > 1 and keys > 1
    org_list = admin_client.get(reverse("admin:inboxes_organization_changelist")).content.decode()
    assert f'?organization__id__exact={org.pk}">{inboxes} inboxes</a>' in org_list
    assert f'?organization__id__exact={org.pk}">{keys} API keys</a>' in org_list
    org_page = admin_client.get(reverse("admin:inboxes_organization_change", args=[org.pk])).content.decode()
    assert f"{inboxes} inboxes" in org_page and f"{keys} API keys" in org_page
    # The links lead to what they say.
    make_history(2)
    for url, count in (
        (f"{reverse(ATTEMPTS)}?api_key={key.pk}", 2),
        (f"{reverse(ATTEMPTS)}?inbox__id__exact={inbox.pk}", 2),
        (f"{reverse('admin:inboxes_message_changelist')}?inbox__id__exact={inbox.pk}", 2),
        (f"{reverse('admin:apikeys_apikey_changelist')}?organization__id__exact={org.pk}", keys),
    ):
        response = admin_client.get(url)
        assert response.status_code == 200 and len(response.context["cl"].result_list) == count, url


# --- no secret in any page -------------------------------------------------------------------


def test_no_page_shows_a_secret(admin_client) -> None:  # type: ignore[no-untyped-def]
    make_history(3)
    stored_message()
    markers = secret_markers(list(DEMO_KEYS))
    urls = [reverse("admin:index")]
    for model in (AuthAttempt, Message, ApiKey, Inbox, Organization):
        opts = model._meta
        urls.append(reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist"))
        for obj in model.objects.all()[:5]:
            urls.append(reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk]))
            urls.append(reverse(f"admin:{opts.app_label}_{opts.model_name}_history", args=[obj.pk]))
    for url in urls:
        page = admin_client.get(url).content.decode()
        assert not [marker for marker in markers if marker in page], url
