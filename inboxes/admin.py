"""Admin for organizations, inboxes and accepted messages."""

from __future__ import annotations

from typing import ClassVar
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html

from agentmail_site.admin_lookups import CheckedChangeList, CheckedLookupsAdmin
from inboxes.models import Inbox, Message, Organization
from smtpgateway.storage.sending_limits import counted, usage


def _limit_text(limit: int | None, used: int) -> str:
    """``used`` against a daily limit as the gateway applies it (empty: the setting)."""
    effective = settings.SMTP_DAILY_RECIPIENT_LIMIT if limit is None else limit
    source = " (the setting SMTP_DAILY_RECIPIENT_LIMIT)" if limit is None else ""
    if not effective:
        return f"{used} recipients in the last 24 hours; no limit{source}"
    return f"{used} of {effective} recipients in the last 24 hours{source}"


@admin.register(Organization)
class OrganizationAdmin(CheckedLookupsAdmin[Organization]):
    list_display = ("public_id", "name", "daily_recipient_limit", "created_at")
    search_fields = ("public_id", "name")
    readonly_fields = ("sending_today", "created_at")

    @admin.display(description="sent in the last 24 hours")
    def sending_today(self, organization: Organization) -> str:
        if organization.pk is None:
            return "-"
        used = counted(0, organization.pk, timezone.now(), inbox=False)[1]
        return _limit_text(organization.daily_recipient_limit, used)


def _status_action(status: Inbox.Status, verb: str):  # type: ignore[no-untyped-def]
    @admin.action(description=f"{verb} selected inboxes")
    def action(modeladmin: InboxAdmin, request: HttpRequest, queryset: QuerySet[Inbox]) -> None:
        count = queryset.update(status=status)
        modeladmin.message_user(request, f"{count} inbox(es) now {status.label.lower()}.", messages.SUCCESS)

    action.__name__ = f"make_{status.value}"
    return action


@admin.register(Inbox)
class InboxAdmin(CheckedLookupsAdmin[Inbox]):
    list_display = ("inbox_id", "email", "display_name", "organization", "status", "created_at")
    list_filter = ("status", "organization")
    list_select_related = ("organization",)
    search_fields = ("inbox_id", "email", "display_name")
    readonly_fields = ("sending_today", "created_at")
    actions = [
        _status_action(Inbox.Status.ACTIVE, "Enable"),
        _status_action(Inbox.Status.DISABLED, "Disable"),
        _status_action(Inbox.Status.SUSPENDED, "Suspend"),
    ]

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


class MessageChangeList(CheckedChangeList):
    def get_queryset(
        self, request: HttpRequest, exclude_parameters: list[str | None] | None = None
    ) -> QuerySet[Message]:
        # The list never shows bodies, which can be megabytes each.
        return super().get_queryset(request, exclude_parameters).defer("raw")


@admin.register(Message)
class MessageAdmin(CheckedLookupsAdmin[Message]):
    """Read-only: messages are written by the gateway only."""

    list_display = ("queue_id", "inbox", "envelope_from", "recipient_count", "subject", "size", "status", "created_at")
    # A date filter (today, past 7 days, this month, this year), not a date
    # hierarchy: that runs a SELECT DISTINCT over the whole table on every page
    # view, where a range is an index scan.
    list_filter = ("status", ("created_at", admin.DateFieldListFilter), "inbox__organization")
    list_select_related = ("inbox",)
    search_fields = ("queue_id", "message_id", "subject", "envelope_from", "inbox__inbox_id")
    fields: ClassVar[tuple[str, ...]] = (
        "queue_id",
        "inbox",
        "status",
        "envelope_from",
        "envelope_to",
        "size",
        "message_id",
        "subject",
        "created_at",
        "submitted_by",
        "raw_text",
    )
    readonly_fields: ClassVar[tuple[str, ...]] = fields

    def get_changelist(self, request: HttpRequest, **kwargs: object) -> type[CheckedChangeList]:
        return MessageChangeList

    @admin.display(description="submitted in")
    def submitted_by(self, message: Message) -> str:
        """The SMTP session, linked to its AUTH attempt (bounces have none)."""
        if not message.session_id:
            return "-"
        url = reverse("admin:smtpgateway_authattempt_changelist") + "?" + urlencode({"q": message.session_id})
        return format_html('session <a href="{}">{}</a> (its AUTH attempt)', url, message.session_id)

    @admin.display(description="recipients")
    def recipient_count(self, message: Message) -> int:
        return len(message.envelope_to or [])

    @admin.display(description="raw message (as stored, with the gateway's Received: header)")
    def raw_text(self, message: Message) -> str:
        return format_html('<pre style="white-space: pre-wrap">{}</pre>', bytes(message.raw).decode("utf-8", "replace"))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Message | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Message | None = None) -> bool:
        return False
