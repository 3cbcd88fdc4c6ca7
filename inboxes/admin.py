"""Admin for organizations, inboxes and accepted messages."""

from __future__ import annotations

from typing import ClassVar

from django.conf import settings
from django.contrib import admin, messages
from django.db import transaction
from django.db.models import Count, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.http import Http404, HttpRequest, HttpResponse
from django.urls import URLPattern, path
from django.utils import timezone
from django.utils.formats import localize
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe
from django.utils.timezone import localtime

from agentmail_site.admin_audit import log_action_changes
from agentmail_site.admin_links import change_url, changelist_url, link, link_to
from agentmail_site.admin_lookups import CheckedChangeList, CheckedLookupsAdmin
from apikeys.models import ApiKey
from inboxes import mail_summary
from inboxes.models import Inbox, Message, Organization
from smtpgateway.storage.sending_limits import counted, usage


def _count_of(model: type[ApiKey] | type[Inbox]) -> Coalesce:
    """A per-organization count as a subquery: two counts by joins would multiply."""
    rows = model.objects.filter(organization=OuterRef("pk")).order_by().values("organization")
    return Coalesce(Subquery(rows.annotate(n=Count("pk")).values("n")), 0)


def _limit_text(limit: int | None, used: int) -> str:
    """``used`` against a daily limit as the gateway applies it (empty: the setting)."""
    effective = settings.SMTP_DAILY_RECIPIENT_LIMIT if limit is None else limit
    source = " (the setting SMTP_DAILY_RECIPIENT_LIMIT)" if limit is None else ""
    if not effective:
        return f"{used} recipients in the last 24 hours; no limit{source}"
    return f"{used} of {effective} recipients in the last 24 hours{source}"


@admin.register(Organization)
class OrganizationAdmin(CheckedLookupsAdmin[Organization]):
    list_display = ("public_id", "name", "daily_recipient_limit", "inboxes_link", "keys_link", "created_at")
    search_fields = ("public_id", "name")
    fields = ("public_id", "name", "daily_recipient_limit", "sending_today", "created_at", "inboxes_link", "keys_link")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Organization]:
        return super().get_queryset(request).annotate(inbox_count=_count_of(Inbox), key_count=_count_of(ApiKey))

    def get_readonly_fields(self, request: HttpRequest, obj: Organization | None = None) -> tuple[str, ...]:
        # The public id is what the organization's systems know it by: fixed once made.
        fixed = ("public_id",) if obj is not None else ()
        return (*fixed, "sending_today", "created_at", "inboxes_link", "keys_link")

    @admin.display(description="sent in the last 24 hours")
    def sending_today(self, organization: Organization) -> str:
        if organization.pk is None:
            return "-"
        used = counted(0, organization.pk, timezone.now(), inbox=False)[1]
        return _limit_text(organization.daily_recipient_limit, used)

    @admin.display(description="inboxes", ordering="inbox_count")
    def inboxes_link(self, org: Organization) -> SafeString | str:
        if org.pk is None:
            return "-"
        count = getattr(org, "inbox_count", 0)
        return link(changelist_url(Inbox, organization__id__exact=org.pk), f"{count} inbox{'es' if count != 1 else ''}")

    @admin.display(description="API keys", ordering="key_count")
    def keys_link(self, org: Organization) -> SafeString | str:
        if org.pk is None:
            return "-"
        count = getattr(org, "key_count", 0)
        return link(
            changelist_url(ApiKey, organization__id__exact=org.pk), f"{count} API key{'s' if count != 1 else ''}"
        )


def _status_action(status: Inbox.Status, verb: str):  # type: ignore[no-untyped-def]
    @admin.action(description=f"{verb} selected inboxes")
    def action(modeladmin: InboxAdmin, request: HttpRequest, queryset: QuerySet[Inbox]) -> None:
        with transaction.atomic():
            changing = list(queryset.select_for_update().exclude(status=status).select_related(None))
            Inbox.objects.filter(pk__in=[inbox.pk for inbox in changing]).update(status=status)
        log_action_changes(
            request,
            [(inbox, f"Status: {Inbox.Status(inbox.status).label} → {status.label}.") for inbox in changing],
        )
        modeladmin.message_user(request, f"{len(changing)} inbox(es) now {status.label.lower()}.", messages.SUCCESS)

    action.__name__ = f"make_{status.value}"
    return action


@admin.register(Inbox)
class InboxAdmin(CheckedLookupsAdmin[Inbox]):
    list_display = ("inbox_id", "email", "display_name", "organization", "status", "created_at")
    list_filter = ("status", "organization")
    list_select_related = ("organization",)
    search_fields = ("inbox_id", "email", "display_name")
    actions = [
        _status_action(Inbox.Status.ACTIVE, "Enable"),
        _status_action(Inbox.Status.DISABLED, "Disable"),
        _status_action(Inbox.Status.SUSPENDED, "Suspend"),
    ]

    def get_readonly_fields(self, request: HttpRequest, obj: Inbox | None = None) -> tuple[str, ...]:
        if obj is None:
            return ("sending_today", "created_at")
        # The inbox id is the SMTP username its agents log in with: changing it
        # would lock them all out, so it is fixed once the inbox exists.
        return ("inbox_id", "organization", "sending_today", "created_at", "records")

    def get_fields(self, request: HttpRequest, obj: Inbox | None = None) -> tuple[str, ...]:
        fields = ("inbox_id", "organization", "email", "display_name", "status", "daily_recipient_limit")
        return (*fields, "created_at") if obj is None else (*fields, "sending_today", "created_at", "records")

    @admin.display(description="sent in the last 24 hours")
    def sending_today(self, inbox: Inbox) -> str:
        """Its usage against its own limit and its organization's (smtpgateway.storage.sending_limits)."""
        if inbox.pk is None:
            return "-"
        used, organization_used = usage(inbox, timezone.now())
        return format_html(
            "{}<br>organization {}: {}",
            _limit_text(inbox.daily_recipient_limit, used),
            inbox.organization.public_id,
            _limit_text(inbox.organization.daily_recipient_limit, organization_used),
        )

    @admin.display(description="records")
    def records(self, inbox: Inbox) -> SafeString:
        from smtpgateway.models import AuthAttempt  # the gateway's app depends on this one

        # Keys of its organization limited to no inbox, or to this one among others.
        usable = ApiKey.objects.filter(organization_id=inbox.organization_id).filter(Q(inboxes=None) | Q(inboxes=inbox))
        keys = usable.distinct().count()
        sent = Message.objects.filter(inbox=inbox).count()
        return format_html(
            "{} · {} · {}",
            link(changelist_url(Message, inbox__id__exact=inbox.pk), f"{sent} message{'s' if sent != 1 else ''}"),
            link(changelist_url(AuthAttempt, inbox__id__exact=inbox.pk), "AUTH attempts"),
            link(
                changelist_url(ApiKey, organization__id__exact=inbox.organization_id),
                f"{keys} API key{'s' if keys != 1 else ''} of {inbox.organization} (usable with this inbox)",
            ),
        )


class MessageChangeList(CheckedChangeList):
    def get_queryset(
        self, request: HttpRequest, exclude_parameters: list[str | None] | None = None
    ) -> QuerySet[Message]:
        # The list never shows bodies, which can be megabytes each.
        return super().get_queryset(request, exclude_parameters).defer("raw")


@admin.register(Message)
class MessageAdmin(CheckedLookupsAdmin[Message]):
    """Read-only: messages are written by the gateway only. The detail page reads
    a message as mail: envelope, headers, parts, a bounded preview, the .eml."""

    list_display = ("queue_id", "inbox", "envelope_from", "recipient_count", "subject", "size", "status", "created_at")
    # A date filter (today, past 7 days, this month, this year), not a date
    # hierarchy: that runs a SELECT DISTINCT over the whole table on every page
    # view, where a range is an index scan.
    list_filter = ("status", ("created_at", admin.DateFieldListFilter), "inbox__organization")
    list_select_related = ("inbox",)
    search_fields = ("queue_id", "message_id", "subject", "envelope_from", "inbox__inbox_id")
    # The envelope and where the message came from, then the mail itself.
    fields: ClassVar[tuple[str, ...]] = (
        "queue_id",
        "inbox",
        "status",
        "created_at",
        "envelope_from",
        "envelope_recipients",
        "size_display",
        "submitted_by",
        "message_id",
        "subject",
        "headers",
        "parts",
        "preview",
        "download",
    )
    readonly_fields: ClassVar[tuple[str, ...]] = fields

    def get_changelist(self, request: HttpRequest, **kwargs: object) -> type[CheckedChangeList]:
        return MessageChangeList

    def get_urls(self) -> list[URLPattern]:
        download = path(
            "<path:object_id>/message.eml",
            self.admin_site.admin_view(self.eml_view),
            name="inboxes_message_eml",
        )
        return [download, *super().get_urls()]

    def eml_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The message as stored (with the gateway's Received: header), as a file."""
        message = self.get_object(request, object_id)
        if message is None or not self.has_view_permission(request, message):
            raise Http404("No such message")
        response = HttpResponse(bytes(message.raw), content_type="message/rfc822")
        response["Content-Disposition"] = f'attachment; filename="{mail_summary.eml_filename(message.queue_id)}"'
        return response

    @staticmethod
    def _mail(message: Message) -> mail_summary.MailSummary:
        """Read once per page, by the first field that needs it."""
        view: mail_summary.MailSummary | None = getattr(message, "_mail", None)
        if view is None:
            view = message._mail = mail_summary.MailSummary.of(bytes(message.raw))  # type: ignore[attr-defined]
        return view

    @admin.display(description="recipients")
    def recipient_count(self, message: Message) -> int:
        return len(message.envelope_to or [])

    @admin.display(description="envelope recipients (RCPT TO)")
    def envelope_recipients(self, message: Message) -> SafeString:
        return format_html_join(mark_safe("<br>"), "{}", ((address,) for address in message.envelope_to or []))

    @admin.display(description="size")
    def size_display(self, message: Message) -> str:
        return f"{mail_summary.human_size(message.size)} ({message.size:,} bytes as sent)"

    @admin.display(description="submitted in")
    def submitted_by(self, message: Message) -> SafeString | str:
        """The SMTP session, its successful AUTH and the key it used (bounces have none)."""
        if not message.session_id:
            return "-"
        from smtpgateway.models import AuthAttempt  # the gateway's app depends on this one
        from smtpgateway.sessions import submitting_attempt

        session = link(changelist_url(AuthAttempt, session_id=message.session_id), message.session_id)
        attempt = submitting_attempt(message)
        if attempt is None:
            return format_html("session {} (its AUTH attempt is no longer kept)", session)
        key = link_to(attempt.api_key) if attempt.api_key_id else attempt.key_prefix or "-"
        return format_html(
            "session {}: {} from {}, with API key {}",
            session,
            link(change_url(attempt), f"AUTH {attempt.mechanism} at {localize(localtime(attempt.created_at))}"),
            attempt.remote_addr or "-",
            key,
        )

    @admin.display(description="headers")
    def headers(self, message: Message) -> SafeString:
        view = self._mail(message)
        rows = format_html_join("", "<tr><th>{}</th><td>{}</td></tr>", view.headers)
        more = format_html("<p>… and {} more</p>", view.headers_left_out) if view.headers_left_out else ""
        return format_html('<table class="mail-headers">{}</table>{}', rows, more)

    @admin.display(description="MIME parts")
    def parts(self, message: Message) -> SafeString:
        view = self._mail(message)
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (part.path or "message", part.content_type, mail_summary.human_size(part.size), part.filename or "-")
                for part in view.parts
            ),
        )
        head = mark_safe("<tr><th>part</th><th>type</th><th>size</th><th>file name</th></tr>")
        return format_html('<table class="mail-parts">{}{}</table>', head, rows)

    @admin.display(description="body preview")
    def preview(self, message: Message) -> SafeString:
        view = self._mail(message)
        cut = (
            format_html("<p>… the first {} characters; the rest is in the .eml.</p>", len(view.preview))
            if view.preview_cut
            else ""
        )
        return format_html('<pre class="mail-preview" style="white-space: pre-wrap">{}</pre>{}', view.preview, cut)

    @admin.display(description="raw message")
    def download(self, message: Message) -> SafeString:
        url = change_url(message).removesuffix("change/") + "message.eml"
        return format_html(
            '<a class="button" id="download-eml" href="{}" download>Download {}</a> '
            "(as stored: with the gateway's Received: header)",
            url,
            mail_summary.eml_filename(message.queue_id),
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Message | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Message | None = None) -> bool:
        return False
