"""The audit trail of every AUTH attempt that reached the gateway."""

from __future__ import annotations

from django.db import models

from smtpgateway.reasons import Reason
from smtpgateway.storage.jobs import USERNAME_MAX_LENGTH


class AuthAttempt(models.Model):
    # Every AUTH writes a row, so every index costs on the hot path; each one here
    # is read through. The flags (success, encrypted, mechanism) have two or three
    # values each: an index on them would not help the admin's newest-first pages
    # (the created_at index serves those). remote_addr and session_id have none:
    # the admin searches them with icontains, which no B-tree serves, and their
    # random keys cost a page write each per row (the rate limit has its own
    # index, below). reason's index is a plain one: Django's db_index adds a
    # LIKE-pattern twin on PostgreSQL that nothing uses.
    created_at = models.DateTimeField()  # indexed below (authattempt_created)
    remote_addr = models.GenericIPAddressField("client address", null=True, blank=True)
    remote_port = models.PositiveIntegerField("client port", null=True, blank=True)
    client_network = models.CharField(
        max_length=43,  # "ffff:...:ffff/128"
        null=True,  # rows from before migration 0009 outside the window it filled
        blank=True,
        help_text="What the AUTH rate limit counts by: the IPv4 address, or the IPv6 address's network "
        "(SMTP_IPV6_CLIENT_PREFIX bits, /64 by default).",
    )
    session_id = models.CharField(max_length=32, help_text="Also in the gateway's log lines.")
    encrypted = models.BooleanField(default=False, help_text="Whether the session was under TLS.")
    tls_version = models.CharField("TLS version", max_length=16, blank=True)
    tls_cipher = models.CharField("TLS cipher", max_length=64, blank=True)
    mechanism = models.CharField(max_length=32, blank=True)
    username = models.CharField(
        max_length=USERNAME_MAX_LENGTH,
        blank=True,
        help_text="As presented, made printable and truncated. A username shaped like an API key is withheld.",
    )
    key_prefix = models.CharField(max_length=16, blank=True, help_text="Only when the key had a valid format.")
    success = models.BooleanField()
    credential_failure = models.BooleanField(
        default=False, help_text="A failed credential check: what the per-address AUTH rate limit counts."
    )
    reason = models.CharField(max_length=32, choices=Reason.choices())  # indexed below, for the admin's filter
    inbox = models.ForeignKey(
        "inboxes.Inbox",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        db_constraint=False,
        db_index=False,
    )
    api_key = models.ForeignKey(
        "apikeys.ApiKey",
        verbose_name="API key",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        db_constraint=False,
        db_index=False,
    )
    organization = models.ForeignKey(
        "inboxes.Organization",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        db_constraint=False,
        db_index=False,
    )

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            # Newest first (the admin's lists, pruneattempts), and the overview's
            # hours by outcome: success and credential_failure beside the key let
            # PostgreSQL count a day of attempts from the index alone.
            models.Index(fields=["created_at"], include=["success", "credential_failure"], name="authattempt_created"),
            # The overview's top failing networks and usernames of the last day: the
            # failed credential checks only, what they are grouped by beside them.
            models.Index(
                fields=["created_at"],
                include=["client_network", "username"],
                condition=models.Q(credential_failure=True),
                name="authattempt_failed_recent",
            ),
            # The rate limit counts a client's (client_network's) recent failed
            # credential checks on every AUTH. This partial index holds only those
            # rows: not successes, and not the refusals of a client already locked
            # out, so a check reads at most `limit` entries however hard an attack is.
            # (A boolean condition, not "reason IN (...)": SQLite uses a partial index
            # only when the query states its condition literally, without parameters.)
            models.Index(
                fields=["client_network", "created_at"],
                condition=models.Q(credential_failure=True),
                name="authattempt_counted_failures",
            ),
            models.Index(fields=["reason"], name="authattempt_reason"),
            # The foreign keys are read by the admin's organization filter and by
            # deleting an inbox, key or organization (SET_NULL), never for NULL. A
            # failure that found no key has all three NULL, so these partial
            # indexes spare most failed attempts three index inserts.
            *(
                models.Index(
                    fields=[name], condition=models.Q(**{f"{name}__isnull": False}), name=f"authattempt_{name}"
                )
                for name in ("inbox", "api_key", "organization")
            ),
        ]
        verbose_name = "AUTH attempt"

    def __str__(self) -> str:
        outcome = "ok" if self.success else self.reason
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.username or '-'} {outcome}"


class AuthHourSummary(models.Model):
    """One settled hour of AuthAttempt rows as the admin's overview shows it
    (``smtpgateway.overview``): written once, by the first view that needs it,
    then read by every view of the next day instead of that hour's rows."""

    hour = models.DateTimeField(unique=True, help_text="The hour's start (UTC).")
    counts = models.JSONField(help_text="Attempts by outcome.")
    networks = models.JSONField(help_text="Failed credential checks by client network: the hour's most.")
    usernames = models.JSONField(help_text="Failed credential checks by username: the hour's most.")

    class Meta:
        verbose_name = "AUTH hour summary"

    def __str__(self) -> str:
        return f"{self.hour:%Y-%m-%d %H}:00"
