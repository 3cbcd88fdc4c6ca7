"""Admin for the AUTH audit trail: read-only, newest first, filterable."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from smtpgateway.models import AuthAttempt


@admin.register(AuthAttempt)
class AuthAttemptAdmin(admin.ModelAdmin):
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
    list_filter = ("success", "reason", "mechanism", "encrypted", "tls_version", "organization")
    list_select_related = ("inbox", "organization")
    search_fields = ("username", "remote_addr", "session_id", "key_prefix")
    date_hierarchy = "created_at"
    show_full_result_count = False  # a COUNT(*) over millions of rows per page view is not worth it

    def get_readonly_fields(self, request: HttpRequest, obj: AuthAttempt | None = None) -> list[str]:
        return [f.name for f in self.model._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: AuthAttempt | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: AuthAttempt | None = None) -> bool:
        return False
