"""Admin for API keys: create (plaintext shown once), list by state, revoke."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.cache import add_never_cache_headers

from agentmail_site.admin_lookups import CheckedLookupsAdmin
from apikeys import keys
from apikeys.models import ApiKey, validate_inboxes
from apikeys.scopes import KNOWN_SCOPES, SMTP_SEND
from inboxes.models import Inbox


class ApiKeyForm(forms.ModelForm[ApiKey]):
    scopes = forms.MultipleChoiceField(
        choices=[(scope, f"{scope}: {text}") for scope, text in KNOWN_SCOPES.items()],
        widget=forms.CheckboxSelectMultiple,
        initial=[SMTP_SEND],
    )

    class Meta:
        model = ApiKey
        fields = ("organization", "name", "scopes", "inboxes", "expires_at")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        inboxes = self.fields.get("inboxes")
        if inboxes is not None and self.instance.pk is not None:
            # Only the key's own organization's inboxes can be chosen.
            inboxes.queryset = Inbox.objects.filter(organization_id=self.instance.organization_id)  # type: ignore[attr-defined]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        organization = cleaned.get("organization") or getattr(self.instance, "organization", None)
        chosen = list(cleaned.get("inboxes") or [])
        if organization is not None and chosen:
            try:
                validate_inboxes(organization, chosen)
            except ValidationError as error:
                self.add_error("inboxes", error)
        return cleaned


class StateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]) -> list[tuple[str, str]]:
        return list(ApiKey.State.choices)

    def queryset(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> QuerySet[ApiKey]:
        now = timezone.now()
        if self.value() == ApiKey.State.REVOKED:
            return queryset.filter(revoked_at__isnull=False)
        if self.value() == ApiKey.State.EXPIRED:
            return queryset.filter(revoked_at__isnull=True, expires_at__lte=now)
        if self.value() == ApiKey.State.ACTIVE:
            return queryset.filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now), revoked_at__isnull=True)
        return queryset


@admin.register(ApiKey)
class ApiKeyAdmin(CheckedLookupsAdmin[ApiKey]):
    form = ApiKeyForm
    list_display = (
        "prefix_display",
        "name",
        "organization",
        "scope_list",
        "state_display",
        "expires_at",
        "last_used_at",
        "created_at",
    )
    list_filter = (StateFilter, "organization")
    list_select_related = ("organization",)
    search_fields = ("prefix", "name", "organization__public_id")
    filter_horizontal = ("inboxes",)
    actions = ["revoke"]

    def get_readonly_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> tuple[str, ...]:
        if obj is None:
            return ()
        return ("organization", "prefix_display", "state_display", "revoked_at", "last_used_at", "created_at")

    def get_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> tuple[str, ...]:
        if obj is None:
            return ("organization", "name", "scopes", "inboxes", "expires_at")
        return (
            "prefix_display",
            "organization",
            "name",
            "scopes",
            "inboxes",
            "expires_at",
            "state_display",
            "revoked_at",
            "last_used_at",
            "created_at",
        )

    @admin.display(description="key", ordering="prefix")
    def prefix_display(self, api_key: ApiKey) -> str:
        return f"{api_key.prefix}…"

    @admin.display(description="scopes")
    def scope_list(self, api_key: ApiKey) -> str:
        return ", ".join(api_key.scopes)

    @admin.display(description="state")
    def state_display(self, api_key: ApiKey) -> str:
        return api_key.state().label

    @admin.action(description="Revoke selected API keys")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        count = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        self.message_user(request, f"Revoked {count} key(s).", messages.SUCCESS)

    def save_model(self, request: HttpRequest, obj: ApiKey, form: forms.ModelForm[ApiKey], change: bool) -> None:
        if not change:
            # Issued here so the plaintext exists only in this request's memory.
            plaintext = keys.generate_key()
            obj.prefix = keys.visible_prefix(plaintext)
            obj.digest = keys.digest_key(plaintext)
            obj._plaintext_once = plaintext  # type: ignore[attr-defined]
        super().save_model(request, obj, form, change)

    def response_add(self, request: HttpRequest, obj: ApiKey, post_url_continue: str | None = None) -> HttpResponse:
        plaintext = getattr(obj, "_plaintext_once", None)
        if plaintext is None:
            return super().response_add(request, obj, post_url_continue)
        del obj._plaintext_once  # type: ignore[attr-defined]
        context: dict[str, Any] = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "api_key": obj,
            "plaintext": plaintext,
            "title": "API key created",
        }
        # Rendered in this response only: not a message (cookie or session row),
        # not a redirect, and never cached.
        response = TemplateResponse(request, "admin/apikeys/apikey/created.html", context)
        add_never_cache_headers(response)
        return response
