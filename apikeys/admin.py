"""Admin for API keys: create (plaintext shown once, one key per form), list by
state, revoke after a confirmation, every change in the admin's history."""

from __future__ import annotations

import secrets
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core import signing
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.cache import add_never_cache_headers
from django.utils.formats import localize
from django.utils.html import format_html
from django.utils.safestring import SafeString

from agentmail_site.admin_audit import log_action_changes
from agentmail_site.admin_links import changelist_url, link
from agentmail_site.admin_lookups import CheckedLookupsAdmin
from apikeys import keys
from apikeys.models import ApiKey, validate_inboxes
from apikeys.scopes import KNOWN_SCOPES, SMTP_SEND
from inboxes.models import Inbox

FORM_TOKEN_SALT = "apikeys.admin.add-form"


def new_form_token() -> str:
    """A nonce for one add form, signed so that only forms this admin served count."""
    return signing.dumps(secrets.token_urlsafe(16), salt=FORM_TOKEN_SALT)


def form_token_nonce(signed: str) -> str | None:
    try:
        nonce = signing.loads(signed, salt=FORM_TOKEN_SALT)
    except signing.BadSignature:
        return None
    return nonce if isinstance(nonce, str) else None


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


class ApiKeyAddForm(ApiKeyForm):
    """The add form carries a one-time token: the key it creates records it, so
    the same form submitted again (a reload, "resubmit", a double click) finds
    that key instead of issuing another."""

    one_time_token = forms.CharField(widget=forms.HiddenInput)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not self.is_bound:
            self.fields["one_time_token"].initial = new_form_token()

    def clean_one_time_token(self) -> str:
        nonce = form_token_nonce(self.cleaned_data["one_time_token"])
        if nonce is None:
            raise forms.ValidationError("This form was not issued by this admin: open “Add API key” again.")
        return nonce


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


def attempts_of_key_url(api_key: ApiKey) -> str:
    # The filter smtpgateway.admin.ApiKeyFilter reads (imported lazily there).
    from smtpgateway.models import AuthAttempt

    return changelist_url(AuthAttempt, api_key=api_key.pk)


@admin.register(ApiKey)
class ApiKeyAdmin(CheckedLookupsAdmin[ApiKey]):
    form = ApiKeyForm
    add_form = ApiKeyAddForm
    list_display = (
        "prefix_display",
        "name",
        "organization",
        "scope_list",
        "state_display",
        "expires_at",
        "last_used_at",
        "created_at",
        "attempts_link",
    )
    list_filter = (StateFilter, "organization")
    list_select_related = ("organization",)
    search_fields = ("prefix", "name", "organization__public_id")
    filter_horizontal = ("inboxes",)
    actions = ["revoke"]

    def get_form(self, request: HttpRequest, obj: ApiKey | None = None, change: bool = False, **kwargs: Any) -> Any:
        if obj is None:
            kwargs["form"] = self.add_form
        return super().get_form(request, obj, change, **kwargs)

    def get_readonly_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> tuple[str, ...]:
        if obj is None:
            return ()
        return (
            "organization",
            "prefix_display",
            "state_display",
            "revoked_at",
            "last_used_at",
            "created_at",
            "records",
        )

    def get_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> tuple[str, ...]:
        if obj is None:
            return ("organization", "name", "scopes", "inboxes", "expires_at", "one_time_token")
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
            "records",
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

    @admin.display(description="AUTH attempts")
    def attempts_link(self, api_key: ApiKey) -> SafeString:
        return link(attempts_of_key_url(api_key), "attempts")

    @admin.display(description="records")
    def records(self, api_key: ApiKey) -> SafeString:
        """Where the key was used, and the inboxes it can be used with."""
        limited_to = [inbox.pk for inbox in api_key.inboxes.all()]
        if limited_to:
            usable = link(changelist_url(Inbox, id__in=",".join(map(str, limited_to))), "the inboxes it is limited to")
        else:
            every = changelist_url(Inbox, organization__id__exact=api_key.organization_id)
            usable = format_html("{} of {}", link(every, "every inbox"), api_key.organization)
        return format_html(
            "{} · usable with {}", link(attempts_of_key_url(api_key), "AUTH attempts with this key"), usable
        )

    # --- revoking ---------------------------------------------------------------
    @admin.action(description="Revoke selected API keys")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> TemplateResponse | None:
        """Asks first, on a page of its own (it cannot be undone); then revokes
        the keys not revoked yet, each with an entry in its history."""
        if request.POST.get("post") != "yes":
            return self._revoke_confirmation(request, queryset)
        now = timezone.now()
        with transaction.atomic():
            to_revoke = list(queryset.select_for_update().filter(revoked_at__isnull=True).select_related(None))
            ApiKey.objects.filter(pk__in=[key.pk for key in to_revoke]).update(revoked_at=now)
        changes = [
            (key, f"Revoked at {localize(timezone.localtime(now))} (was {key.state(now).label.lower()}).")
            for key in to_revoke
        ]
        log_action_changes(request, changes)
        self.message_user(request, f"Revoked {len(to_revoke)} key(s).", messages.SUCCESS)
        return None

    def _revoke_confirmation(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> TemplateResponse:
        selected = list(queryset.select_related("organization"))
        context: dict[str, Any] = {
            **self.admin_site.each_context(request),
            "title": "Revoke API keys?",
            "opts": self.model._meta,
            "to_revoke": [key for key in selected if key.revoked_at is None],
            "already_revoked": [key for key in selected if key.revoked_at is not None],
            "selected": [key.pk for key in selected],
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/apikeys/apikey/revoke_confirmation.html", context)

    # --- issuing ----------------------------------------------------------------
    def add_view(
        self, request: HttpRequest, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        if request.method == "POST":
            issued = self._issued_by(request)
            if issued is not None:
                return self._already_created(request, issued)
        try:
            return super().add_view(request, form_url, extra_context)
        except IntegrityError:
            # The same form twice at once: the other request's key committed first.
            issued = self._issued_by(request)
            if issued is None:
                raise
            return self._already_created(request, issued)

    def _issued_by(self, request: HttpRequest) -> ApiKey | None:
        nonce = form_token_nonce(request.POST.get("one_time_token", ""))
        if nonce is None:
            return None
        return ApiKey.objects.filter(form_token=nonce).select_related("organization").first()

    def _already_created(self, request: HttpRequest, api_key: ApiKey) -> TemplateResponse:
        context: dict[str, Any] = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "api_key": api_key,
            "title": "This form already created a key",
        }
        response = TemplateResponse(request, "admin/apikeys/apikey/already_created.html", context)
        add_never_cache_headers(response)
        return response

    def save_model(self, request: HttpRequest, obj: ApiKey, form: forms.ModelForm[ApiKey], change: bool) -> None:
        if not change:
            # Issued here so the plaintext exists only in this request's memory.
            plaintext = keys.generate_key()
            obj.prefix = keys.visible_prefix(plaintext)
            obj.digest = keys.digest_key(plaintext)
            obj.form_token = form.cleaned_data["one_time_token"]
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
        # not a redirect, and never cached. Sending this form again finds the key
        # by its form token and shows _already_created instead.
        response = TemplateResponse(request, "admin/apikeys/apikey/created.html", context)
        add_never_cache_headers(response)
        return response
