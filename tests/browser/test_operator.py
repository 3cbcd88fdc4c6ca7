"""What an operator does in the admin, in a real browser, with a real gateway on
the same database: issue a key and see it work, reload, go back, revoke it and
see the next AUTH fail; find attempts by reason, address and key; read a message."""

from __future__ import annotations

import smtplib
from email.message import EmailMessage

import pytest
from django.contrib.auth.models import User
from selenium.webdriver.common.by import By

from apikeys.models import ApiKey
from inboxes.models import Inbox, Message
from smtpgateway.models import AuthAttempt
from tests.browser.pages import WINDOW, AdminBrowser
from tests.helpers import (
    INVALID,
    REVOKED_KEY,
    SUCCESS,
    UNKNOWN_KEY,
    VALID_INBOX,
    VALID_KEY,
    GatewayFactory,
    LiveGateway,
    auth,
)

INBOX = "inb_browser1234567"


def smtp_auth(gateway: LiveGateway, username: str, password: str, source: str = "127.0.0.1") -> str:
    with smtplib.SMTP("127.0.0.1", gateway.port, timeout=10, source_address=(source, 0)) as client:
        client.ehlo("browser.test")
        return auth(client, "PLAIN", username, password)[1]


def test_issue_a_key_reload_go_back_revoke(
    operator: AdminBrowser, gateway_factory: GatewayFactory, extra_secrets: list[str]
) -> None:
    """Issue 23's walk through, and issue 24's "no second key on reload"."""
    gateway = gateway_factory(auth_cache_seconds=0.0)  # the revocation is seen at the next AUTH
    operator.open("/admin/inboxes/organization/add/")
    operator.fill("public_id", "org_browser")
    operator.fill("name", "Browser tests")
    operator.submit('input[name="_save"]')
    assert "was added successfully" in operator.text

    operator.open("/admin/inboxes/inbox/add/")
    operator.fill("inbox_id", INBOX)
    operator.choose("organization", "org_browser")
    operator.fill("email", "agent@browser.test")
    operator.submit('input[name="_save"]')
    assert "was added successfully" in operator.text

    operator.open("/admin/apikeys/apikey/add/")
    operator.choose("organization", "org_browser")
    operator.fill("name", "browser agent")
    operator.submit('input[name="_save"]')
    plaintext = operator.css("#api-key-plaintext").text
    extra_secrets.append(plaintext)
    assert plaintext.startswith("amk_") and "Copy it now" in operator.text
    key = ApiKey.objects.get(name="browser agent")
    operator.driver.execute_script("document.getElementById('api-key-plaintext').textContent = 'amk_' + '•'.repeat(40)")
    operator.document("api-key-created")  # the plaintext masked for the picture

    assert smtp_auth(gateway, INBOX, plaintext) == SUCCESS

    # A reload sends the form again: the answer says so, with no key, and no second key.
    operator.reload()
    assert "This form was sent before, and it created the key" in operator.text
    assert plaintext not in operator.html
    # Done, then back: the page that showed the key is not shown again.
    operator.follow_link("Open the key")
    operator.back()
    assert plaintext not in operator.html
    operator.reload()
    assert plaintext not in operator.html
    assert ApiKey.objects.filter(organization__public_id="org_browser").count() == 1

    # Revoke: the action asks first.
    operator.open("/admin/apikeys/apikey/")
    operator.tick("_selected_action", str(key.pk))
    operator.choose("action", "Revoke selected API keys")
    operator.submit('button[name="index"]')
    assert "Revoke these API keys? This cannot be undone" in operator.text
    key.refresh_from_db()
    assert key.revoked_at is None
    operator.submit("#confirm-revoke")
    assert "Revoked 1 key(s)." in operator.text
    assert smtp_auth(gateway, INBOX, plaintext) == INVALID
    gateway.settle()

    # The key's page leads to its attempts: the success, then the refusal.
    operator.open(f"/admin/apikeys/apikey/{key.pk}/change/")
    assert "Revoked" in operator.text
    operator.follow_link("AUTH attempts with this key")
    rows = operator.rows()
    assert len(rows) == 2 and "API key revoked" in rows[0] and "Authenticated" in rows[1]
    # The revocation in the key's history, by whom.
    operator.open(f"/admin/apikeys/apikey/{key.pk}/history/")
    assert "Revoked at" in operator.text and "admin" in operator.text

    # The inbox's page, with its records.
    operator.open(f"/admin/inboxes/inbox/{Inbox.objects.get(inbox_id=INBOX).pk}/change/")
    assert not operator.all('input[name="inbox_id"]'), "the SMTP username is not editable"
    assert "0 messages" in operator.text and "1 API key of org_browser" in operator.text
    operator.document("inbox")


@pytest.mark.usefixtures("scenarios")
def test_find_attempts_by_reason_address_and_key(
    operator: AdminBrowser, gateway_factory: GatewayFactory, admin_user: User
) -> None:
    gateway = gateway_factory()
    assert smtp_auth(gateway, VALID_INBOX, VALID_KEY) == SUCCESS
    assert smtp_auth(gateway, VALID_INBOX, REVOKED_KEY) == INVALID
    assert smtp_auth(gateway, VALID_INBOX, UNKNOWN_KEY, source="127.0.0.2") == INVALID
    assert smtp_auth(gateway, "x" * 128, VALID_KEY, source="127.0.0.3") == INVALID  # the longest username kept
    gateway.settle()

    operator.open("/admin/smtpgateway/authattempt/")
    assert len(operator.rows()) == 4
    assert operator.fits_the_window(), "the list scrolls sideways at 1400 px"
    # Every column an operator needs, on screen.
    header = operator.css("#result_list thead").text.lower()
    for column in ("time", "outcome", "reason", "username", "client address", "mechanism", "tls", "api key"):
        assert column in header, column
    right_edge = operator.driver.execute_script(
        "return Math.max(...[...document.querySelectorAll('#result_list th')].map(th => th.getBoundingClientRect().right))"
    )
    assert right_edge <= WINDOW[0]
    assert not operator.all("td.field-tls img"), "a plaintext session is not shown as a failure"
    operator.document("auth-attempts")

    operator.follow(
        operator.driver.find_element(By.CSS_SELECTOR, "#changelist-filter").find_element(
            By.LINK_TEXT, "API key revoked"
        )
    )
    rows = operator.rows()
    assert len(rows) == 1 and "API key revoked" in rows[0] and "?reason=API_KEY_REVOKED" in operator.driver.current_url

    operator.open("/admin/smtpgateway/authattempt/")
    operator.follow_link("127.0.0.2")
    rows = operator.rows()
    assert len(rows) == 1 and "127.0.0.2" in rows[0] and "API key not found" in rows[0]

    operator.open("/admin/smtpgateway/authattempt/")
    filters = operator.css("#changelist-filter")
    valid = ApiKey.objects.get(prefix=VALID_KEY[:10])
    operator.follow(filters.find_element(By.CSS_SELECTOR, f'a[href="?api_key={valid.pk}"]'))
    rows = operator.rows()
    assert len(rows) == AuthAttempt.objects.filter(api_key=valid).count() >= 1
    assert all(VALID_KEY[:10] in row for row in rows)


@pytest.mark.usefixtures("scenarios")
def test_read_a_message_and_follow_it_to_its_session(operator: AdminBrowser, gateway: LiveGateway) -> None:
    mail = EmailMessage()
    mail["From"], mail["To"], mail["Subject"] = "test@agentmail.dev", "a@example.com", "Quarterly report"
    mail.set_content("Hello,\n\nthe report is attached.\n")
    mail.add_attachment(b"%PDF-1.4\n" + b"0" * 20_000, maintype="application", subtype="pdf", filename="report.pdf")
    with gateway.smtp() as client:
        auth(client, "PLAIN", VALID_INBOX, VALID_KEY)
        client.send_message(mail, to_addrs=["a@example.com", "b@example.org"])
    gateway.settle()
    message = Message.objects.get()

    operator.open("/admin/inboxes/message/")
    operator.follow_link(message.queue_id)
    text = operator.text
    assert "a@example.com\nb@example.org" in text
    assert "Quarterly report" in text and "report.pdf" in text and "application/pdf" in text
    assert "the report is attached." in text
    operator.document("message")

    # The .eml, fetched by the page's own link.
    download = operator.driver.execute_async_script(
        """const done = arguments[arguments.length - 1];
        fetch(document.getElementById("download-eml").href).then(async r => done(
            [r.status, r.headers.get("content-type"), r.headers.get("content-disposition"), await r.text()]));"""
    )
    assert download[:3] == [200, "message/rfc822", f'attachment; filename="{message.queue_id}.eml"']
    assert download[3].startswith("Received: ") and "Quarterly report" in download[3]

    # To the AUTH that submitted it, and from there back to the session's messages.
    operator.follow(operator.driver.find_element(By.PARTIAL_LINK_TEXT, "AUTH PLAIN at"))
    assert "Authenticated" in operator.text and VALID_INBOX in operator.text
    operator.follow_link(message.queue_id)
    assert "Quarterly report" in operator.text


def test_the_overview_draws_the_last_day(
    operator: AdminBrowser, gateway_factory: GatewayFactory, scenarios: None
) -> None:
    """Issue 23: from the admin's index to the overview; the chart is drawn (SVG
    from the server, no script) and the failures are attributed."""
    gateway = gateway_factory()
    assert smtp_auth(gateway, VALID_INBOX, VALID_KEY) == SUCCESS
    for _ in range(2):
        assert smtp_auth(gateway, "inb_nobody123456789", VALID_KEY, source="127.0.0.9") == INVALID
    gateway.settle()
    operator.open("/admin/")
    operator.follow(operator.css("#overview-link a"))  # the index links it
    assert "1 succeeded" in operator.text or "1 success" in operator.text, operator.text[:400]
    chart = operator.css("#auth-chart svg")
    size = chart.size
    assert size["width"] > 600 and size["height"] > 100  # drawn, at the page's width
    assert len(operator.all("#auth-chart svg rect")) >= 2  # the bars (and their legend)
    assert "127.0.0.0/24 2" in operator.css("#failing-networks").text  # networks of /24
    assert "inb_nobody123456789" in operator.css("#failing-usernames").text
    assert not operator.all("script[src^='http']") and "fonts.googleapis" not in operator.html
    operator.document("overview")
