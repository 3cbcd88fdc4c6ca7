"""The delivery queue in the admin: each message's recipients and attempts, the
retry-now and cancel actions, and the DKIM keys (their DNS records, never the
private keys)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join

from delivery import queue
from delivery.models import DeliveryAttempt, DkimKey, Recipient
from delivery.states import PENDING
from inboxes.admin import MessageAdmin
from inboxes.models import Message


class RecipientInline(admin.TabularInline[Recipient, Message]):
    model = Recipient
    fields = ("address", "status", "attempts", "next_attempt_at", "last_reply", "finished_at")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class DeliveringMessageAdmin(MessageAdmin):
    """Messages with their delivery: recipients, attempts, DKIM, and actions."""

    inlines = [RecipientInline]
    actions = ["retry_now", "cancel_delivery"]
    fields = (*MessageAdmin.fields[:-1], "delivery_attempts", MessageAdmin.fields[-1])
    readonly_fields = fields

    @admin.display(description="delivery attempts")
    def delivery_attempts(self, message: Message) -> str:
        attempts = DeliveryAttempt.objects.filter(recipient__message=message).select_related("recipient")[:200]
        if not attempts:
            return "none yet"
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{} ms</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (a.started_at.strftime("%Y-%m-%d %H:%M:%S %Z"), a.recipient.address, a.result, a.duration_ms, a.reply,
                 " ".join(filter(None, (a.tls_version, a.tls_cipher))) or "no TLS", a.dkim or "-")
                for a in attempts
            ),
        )  # fmt: skip
        header = "<tr><th>time</th><th>recipient</th><th>result</th><th>took</th><th>reply</th><th>TLS</th><th>DKIM</th></tr>"
        return format_html("<table>{}{}</table>", format_html(header), rows)

    @admin.action(description="Retry the selected messages' pending recipients now")
    def retry_now(self, request: HttpRequest, queryset: QuerySet[Message]) -> None:
        ids = list(Recipient.objects.filter(message__in=queryset, status__in=PENDING).values_list("id", flat=True))
        self.message_user(request, f"{queue.retry_now(ids)} recipient(s) due now.", messages.SUCCESS)

    @admin.action(description="Cancel delivery to the selected messages' pending recipients")
    def cancel_delivery(self, request: HttpRequest, queryset: QuerySet[Message]) -> None:
        ids = list(Recipient.objects.filter(message__in=queryset, status__in=PENDING).values_list("id", flat=True))
        self.message_user(request, f"{queue.cancel(ids)} recipient(s) cancelled.", messages.SUCCESS)

    def has_change_permission(self, request: HttpRequest, obj: Message | None = None) -> bool:
        return False


admin.site.unregister(Message)
admin.site.register(Message, DeliveringMessageAdmin)


@admin.register(DkimKey)
class DkimKeyAdmin(admin.ModelAdmin[DkimKey]):
    """Keys are made with ``manage.py dkimkey add``; here they are shown (the DNS
    record, never the private key) and switched on or off."""

    list_display = ("domain", "selector", "algorithm", "active", "created_at")
    list_filter = ("active", "algorithm")
    fields = ("domain", "selector", "algorithm", "active", "dns_record", "created_at")
    readonly_fields = ("domain", "selector", "algorithm", "dns_record", "created_at")

    @admin.display(description="DNS record to publish")
    def dns_record(self, key: DkimKey) -> str:
        return format_html("<code>{}</code>", key.dns_record)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # manage.py dkimkey add DOMAIN
