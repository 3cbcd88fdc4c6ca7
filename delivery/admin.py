"""The delivery queue in the admin: each message's recipients and attempts, the
retry-now and cancel actions, and the DKIM keys (their DNS records, never the
private keys)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from agentmail_site.admin_audit import log_action_changes
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
    fields = (*MessageAdmin.fields[:8], "delivery_attempts", *MessageAdmin.fields[8:])
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
        header = mark_safe(
            "<tr><th>time</th><th>recipient</th><th>result</th><th>took</th><th>reply</th><th>TLS</th><th>DKIM</th></tr>"
        )
        return format_html("<table>{}{}</table>", header, rows)

    @admin.action(description="Retry the selected messages' pending recipients now")
    def retry_now(self, request: HttpRequest, queryset: QuerySet[Message]) -> None:
        pending = _pending_by_message(queryset)
        count = queue.retry_now([pk for recipients in pending.values() for pk, _ in recipients])
        self._log(request, queryset, pending, "Retry now: {} due at once")
        self.message_user(request, f"{count} recipient(s) due now.", messages.SUCCESS)

    @admin.action(description="Cancel delivery to the selected messages' pending recipients")
    def cancel_delivery(self, request: HttpRequest, queryset: QuerySet[Message]) -> None:
        pending = _pending_by_message(queryset)
        count = queue.cancel([pk for recipients in pending.values() for pk, _ in recipients])
        self._log(request, queryset, pending, "Delivery cancelled (no DSN) to {}")
        self.message_user(request, f"{count} recipient(s) cancelled.", messages.SUCCESS)

    @staticmethod
    def _log(
        request: HttpRequest, queryset: QuerySet[Message], pending: dict[str, list[tuple[int, str]]], what: str
    ) -> None:
        """An entry in each message's history naming the recipients the action touched."""
        touched = queryset.filter(queue_id__in=list(pending)).select_related(None).only("pk", "queue_id")
        log_action_changes(
            request,
            [
                (message, what.format(", ".join(address for _, address in pending[message.queue_id])) + ".")
                for message in touched
            ],
        )

    def has_change_permission(self, request: HttpRequest, obj: Message | None = None) -> bool:
        return False


def _pending_by_message(queryset: QuerySet[Message]) -> dict[str, list[tuple[int, str]]]:
    """The selected messages' recipients still to deliver: queue id -> [(id, address)]."""
    pending: dict[str, list[tuple[int, str]]] = {}
    rows = Recipient.objects.filter(message__in=queryset.values("queue_id"), status__in=PENDING)
    for pk, queue_id, address in rows.order_by("id").values_list("id", "message_id", "address"):
        pending.setdefault(str(queue_id), []).append((pk, address))  # the key is the queue id
    return pending


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
