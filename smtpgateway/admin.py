"""Admin for the AUTH audit trail: read-only, newest first, filterable."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from agentmail_site.admin_lookups import CheckedLookupsAdmin
from smtpgateway.models import AuthAttempt
from smtpgateway.session.auth_exchange import AUTH_MECHANISMS


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


@admin.register(AuthAttempt)
class AuthAttemptAdmin(CheckedLookupsAdmin[AuthAttempt]):
    list_display = (
        "created_at",
        "success",
        "reason",
        "mechanism",
        "username",
        "key_prefix",
        "remote_addr",
        "remote_port",
        "encrypted",
        "tls_version",
        "session_id",
        "inbox",
        "organization",
    )
    # No date hierarchy, for the reason given in inboxes.admin.MessageAdmin.
    list_filter = (
        "success",
        "reason",
        ("created_at", admin.DateFieldListFilter),
        MechanismFilter,
        "encrypted",
        TlsVersionFilter,
        "organization",
    )
    list_select_related = ("inbox", "organization")
    search_fields = ("username", "remote_addr", "session_id", "key_prefix")
    show_full_result_count = False  # a COUNT(*) over millions of rows per page view is not worth it

    def get_readonly_fields(self, request: HttpRequest, obj: AuthAttempt | None = None) -> list[str]:
        return [f.name for f in self.model._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: AuthAttempt | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: AuthAttempt | None = None) -> bool:
        return False
