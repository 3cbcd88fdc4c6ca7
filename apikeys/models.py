"""Scoped API keys. The manager owns issuing a key; the model owns its state."""

from __future__ import annotations

from datetime import datetime

from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from apikeys import keys
from apikeys.scopes import KNOWN_SCOPES, unknown_scopes
from inboxes.models import Inbox, Organization


def validate_scopes(value: object) -> None:
    if not isinstance(value, list) or not all(isinstance(scope, str) for scope in value):
        raise ValidationError("Scopes must be a list of strings.")
    unknown = unknown_scopes(value)
    if unknown:
        raise ValidationError(f"Unknown scopes: {', '.join(unknown)}. Known: {', '.join(KNOWN_SCOPES)}.")


def validate_inboxes(organization: Organization, inboxes: list[Inbox]) -> None:
    """A key can be limited only to inboxes of its own organization."""
    foreign = [inbox.inbox_id for inbox in inboxes if inbox.organization_id != organization.pk]
    if foreign:
        raise ValidationError(f"Not inboxes of {organization.public_id}: {', '.join(foreign)}.")


class ApiKeyManager(models.Manager["ApiKey"]):
    def create_key(
        self,
        *,
        organization: Organization,
        name: str = "",
        scopes: list[str],
        expires_at: datetime | None = None,
        inboxes: list[Inbox] | None = None,
    ) -> tuple[ApiKey, str]:
        """Issue a key, limited to ``inboxes`` if any are given (they must be the
        organization's). Returns the row and the plaintext, which is never stored."""
        validate_scopes(scopes)
        validate_inboxes(organization, inboxes or [])
        plaintext = keys.generate_key()
        api_key = self.create(
            organization=organization,
            name=name,
            prefix=keys.visible_prefix(plaintext),
            digest=keys.digest_key(plaintext),
            scopes=list(dict.fromkeys(scopes)),
            expires_at=expires_at,
        )
        if inboxes:
            api_key.inboxes.set(inboxes)
        return api_key, plaintext


class ApiKey(models.Model):
    class State(models.TextChoices):
        ACTIVE = "active", "Active"
        REVOKED = "revoked", "Revoked"
        EXPIRED = "expired", "Expired"

    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="api_keys")
    name = models.CharField(max_length=200, blank=True, help_text="What the key is for, for operators.")
    prefix = models.CharField(max_length=16, db_index=True, help_text="The visible start of the key.")
    digest = models.CharField(
        max_length=64, unique=True, editable=False, help_text="SHA-256 of the key; the key itself is never stored."
    )
    scopes = models.JSONField(default=list, validators=[validate_scopes])
    inboxes = models.ManyToManyField(
        Inbox,
        blank=True,
        related_name="api_keys",
        help_text="The inboxes this key may send as. None chosen: every inbox of its organization.",
    )
    expires_at = models.DateTimeField(null=True, blank=True, help_text="Empty: never expires.")
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    # Not a secret: a nonce the admin's add form carries, so that submitting one
    # form again (a reload of the "created" page) cannot issue a second key.
    form_token = models.CharField(
        max_length=32,
        unique=True,
        null=True,
        blank=True,
        editable=False,
        help_text="The admin add form that issued it (each form issues at most one key).",
    )

    objects = ApiKeyManager()

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.name})" if self.name else f"{self.prefix}…"

    def state(self, now: datetime | None = None) -> ApiKey.State:
        now = now or timezone.now()
        if self.revoked_at is not None:
            return self.State.REVOKED
        if self.expires_at is not None and self.expires_at <= now:
            return self.State.EXPIRED
        return self.State.ACTIVE
