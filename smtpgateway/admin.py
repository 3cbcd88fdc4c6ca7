"""Admin for the AUTH audit trail: read-only, newest first, filterable."""

from __future__ import annotations

from typing import Any, ClassVar

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.utils.formats import localize
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.timezone import localtime

from agentmail_site.admin_links import change_url, changelist_url, link, link_to
from agentmail_site.admin_lookups import CheckedLookupsAdmin
from apikeys.models import ApiKey
from inboxes.models import Message
from smtpgateway.models import AuthAttempt
from smtpgateway.reasons import Reason
from smtpgateway.session.auth_exchange import AUTH_MECHANISMS
from smtpgateway.sessions import session_messages

SESSION_MESSAGES_SHOWN = 20
RECENT_KEYS_LISTED = 20


class _KnownValuesFilter(admin.SimpleListFilter):
    """A filter over the values this gateway writes, and "other". Django's
    default for a CharField lists every distinct value in the table, found by a
    SELECT DISTINCT over all of it on every page view: slow at millions of rows,
    and for ``mechanism`` the values are whatever names clients sent, so anyone
    could fill the sidebar with junk."""

    known: dict[str, str] = {}  # the query-string value -> the stored value

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]) -> list[tuple[str, str]]:
        return [(choice, choice) for choice in self.known] + [("other", "other")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[AuthAttempt]) -> QuerySet[AuthAttempt]:
        choice = self.value()
        if choice in self.known:
            return queryset.filter(**{str(self.parameter_name): self.known[choice]})
        if choice == "other":
            return queryset.exclude(**{f"{self.parameter_name}__in": list(self.known.values())})
        return queryset


class MechanismFilter(_KnownValuesFilter):
    title = "mechanism"
    parameter_name = "mechanism"
    known = {name: name for name in AUTH_MECHANISMS}  # other: the names of unsupported ones


class TlsVersionFilter(_KnownValuesFilter):
    title = "TLS version"
    parameter_name = "tls_version"
    known = {"TLSv1.3": "TLSv1.3", "TLSv1.2": "TLSv1.2", "plaintext": ""}


class ReasonFilter(admin.SimpleListFilter):
    """Reasons by their words; the code stays the value (``?reason=API_KEY_REVOKED``)."""

    title = "reason"
    parameter_name = "reason"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]) -> list[tuple[str, str]]:
        return [(reason.value, reason.label) for reason in Reason]

    def queryset(self, request: HttpRequest, queryset: QuerySet[AuthAttempt]) -> QuerySet[AuthAttempt]:
        return queryset.filter(reason=self.value()) if self.value() else queryset


class ApiKeyFilter(admin.SimpleListFilter):
    """The keys used most recently, and the one chosen (a key's page links here).
    Not every key: an organization can have thousands."""

    title = "API key"
    parameter_name = "api_key"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]) -> list[tuple[str, str]]:
        recent = ApiKey.objects.filter(last_used_at__isnull=False).order_by("-last_used_at")[:RECENT_KEYS_LISTED]
        keys = list(recent)
        chosen = self.value()
        if chosen and chosen.isdigit() and all(str(key.pk) != chosen for key in keys):
            keys = [*ApiKey.objects.filter(pk=int(chosen)), *keys]
        return [(str(key.pk), str(key)) for key in keys]

    def has_output(self) -> bool:
        # Chosen but not listed (a key since deleted): still filter, or Django
        # would drop the filter and show every attempt.
        return self.value() is not None or super().has_output()

    def queryset(self, request: HttpRequest, queryset: QuerySet[AuthAttempt]) -> QuerySet[AuthAttempt]:
        chosen = self.value()
        if chosen is None:
            return queryset
        return queryset.filter(api_key_id=int(chosen)) if chosen.isdigit() else queryset.none()


class ClientAddressFilter(admin.SimpleListFilter):
    """Set by clicking a client address in the list (the value is checked as an
    address by CheckedChangeList before any query)."""

    title = "client address"
    parameter_name = "remote_addr"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]) -> list[tuple[str, str]]:
        chosen = self.value()
        return [(chosen, chosen)] if chosen else []

    def queryset(self, request: HttpRequest, queryset: QuerySet[AuthAttempt]) -> QuerySet[AuthAttempt]:
        return queryset.filter(remote_addr=self.value()) if self.value() else queryset


@admin.register(AuthAttempt)
class AuthAttemptAdmin(CheckedLookupsAdmin[AuthAttempt]):
    # What fits a 1400 px screen beside the filters; the rest is on each attempt's page.
    list_display = (
        "time",
        "outcome",
        "reason_display",
        "username",
        "client",
        "mechanism",
        "tls",
        "key",
    )
    list_display_links = ("time",)
    # No date hierarchy, for the reason given in inboxes.admin.MessageAdmin.
    list_filter = (
        "success",
        ReasonFilter,
        ("created_at", admin.DateFieldListFilter),
        MechanismFilter,
        TlsVersionFilter,
        ClientAddressFilter,
        ApiKeyFilter,
        "organization",
    )
    list_select_related = ("api_key",)
    # The reason's code is searchable as it is written (=: exact, not a scan of every row's text).
    search_fields = ("username", "remote_addr", "session_id", "key_prefix", "=reason")
    show_full_result_count = False  # a COUNT(*) over millions of rows per page view is not worth it
    fields: ClassVar[tuple[str, ...]] = (
        "time",
        "outcome",
        "reason_display",
        "counted",
        "username",
        "key_prefix",
        "api_key_link",
        "inbox_link",
        "organization_link",
        "remote_addr",
        "remote_port",
        "client_network",
        "mechanism",
        "tls_version",
        "tls_cipher",
        "session_id",
        "session_messages_list",
    )
    readonly_fields: ClassVar[tuple[str, ...]] = fields

    class Media:
        css = {"all": ("smtpgateway/admin.css",)}

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> TemplateResponse:
        # The widest list: without the navigation sidebar its eight columns and
        # the filters fit 1400 px (the sidebar is one click away on every other page).
        context = {"is_nav_sidebar_enabled": False, **(extra_context or {})}
        return super().changelist_view(request, context)  # type: ignore[return-value]

    @admin.display(description="time", ordering="created_at")
    def time(self, attempt: AuthAttempt) -> str:
        return localize(localtime(attempt.created_at))

    @admin.display(description="outcome", boolean=True, ordering="success")
    def outcome(self, attempt: AuthAttempt) -> bool:
        return attempt.success

    @admin.display(description="reason", ordering="reason")
    def reason_display(self, attempt: AuthAttempt) -> SafeString:
        return format_html('<span title="{}">{}</span>', attempt.reason, attempt.get_reason_display())

    @admin.display(description="credential failure")
    def counted(self, attempt: AuthAttempt) -> str:
        if attempt.credential_failure:
            return "yes: a failed credential check, counted by the per-address AUTH rate limit"
        return "no: not counted by the rate limit"

    @admin.display(description="client address", ordering="remote_addr")
    def client(self, attempt: AuthAttempt) -> SafeString | str:
        if not attempt.remote_addr:
            return "-"
        url = changelist_url(AuthAttempt, remote_addr=attempt.remote_addr)
        return format_html(
            '<a href="{}" title="only attempts from {}">{}</a>', url, attempt.remote_addr, attempt.remote_addr
        )

    @admin.display(description="TLS", ordering="tls_version")
    def tls(self, attempt: AuthAttempt) -> str:
        # Words, not Django's red cross: a plaintext session on loopback is no failure.
        return attempt.tls_version or ("TLS" if attempt.encrypted else "plaintext")

    @admin.display(description="API key", ordering="key_prefix")
    def key(self, attempt: AuthAttempt) -> SafeString | str:
        if attempt.api_key is None:
            return f"{attempt.key_prefix}…" if attempt.key_prefix else "-"
        return link(changelist_url(AuthAttempt, api_key=attempt.api_key_id), f"{attempt.key_prefix}…")

    @admin.display(description="API key")
    def api_key_link(self, attempt: AuthAttempt) -> SafeString | str:
        return link_to(attempt.api_key)

    @admin.display(description="inbox")
    def inbox_link(self, attempt: AuthAttempt) -> SafeString | str:
        return link_to(attempt.inbox)

    @admin.display(description="organization")
    def organization_link(self, attempt: AuthAttempt) -> SafeString | str:
        return link_to(attempt.organization)

    @admin.display(description="messages of this session")
    def session_messages_list(self, attempt: AuthAttempt) -> SafeString | str:
        if attempt.reason != Reason.OK:
            return "none: the AUTH failed"
        messages = list(session_messages(attempt).order_by("created_at")[: SESSION_MESSAGES_SHOWN + 1])
        if not messages:
            return "none"
        items = format_html_join(
            "",
            "<li>{} {} → {}</li>",
            (
                (link(change_url(m), m.queue_id), m.subject or "(no subject)", ", ".join(m.envelope_to))
                for m in messages[:SESSION_MESSAGES_SHOWN]
            ),
        )
        url = changelist_url(Message, inbox__id__exact=attempt.inbox_id, session_id=attempt.session_id)
        return format_html('<ul class="session-messages">{}</ul>{}', items, link(url, "all messages of this session"))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: AuthAttempt | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: AuthAttempt | None = None) -> bool:
        return False
