"""Organizations, their agent inboxes, and the messages the gateway accepted."""

from __future__ import annotations

from django.core.validators import RegexValidator
from django.db import models
from django.db.models.functions import Lower

from inboxes.ids import INBOX_ID_PATTERN, ORGANIZATION_ID_PATTERN
from inboxes.status import InboxStatus


class Organization(models.Model):
    public_id = models.CharField(
        max_length=64,
        unique=True,
        validators=[RegexValidator(ORGANIZATION_ID_PATTERN.pattern + r"\Z")],
        help_text="Public identifier such as org_abc.",
    )
    name = models.CharField(max_length=200)
    daily_recipient_limit = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Recipients its inboxes may send to, together, in any 24 hours. "
        "Empty: the setting SMTP_DAILY_RECIPIENT_LIMIT; 0: no limit.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["public_id"]

    def __str__(self) -> str:
        return self.public_id


class Inbox(models.Model):
    class Status(models.TextChoices):
        ACTIVE = InboxStatus.ACTIVE.value, "Active"
        DISABLED = InboxStatus.DISABLED.value, "Disabled"
        SUSPENDED = InboxStatus.SUSPENDED.value, "Suspended"

    inbox_id = models.CharField(
        max_length=36,
        unique=True,
        validators=[RegexValidator(INBOX_ID_PATTERN.pattern + r"\Z")],
        help_text="The SMTP username: inb_ followed by 12 to 32 letters or digits.",
    )
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="inboxes")
    email = models.EmailField(
        unique=True,
        help_text="The only envelope sender (MAIL FROM) this inbox may use.",
    )
    display_name = models.CharField(max_length=200, blank=True)
    status = models.CharField(
        max_length=16,
        choices=Status.choices,
        default=Status.ACTIVE,
        db_index=True,
        help_text="Only active inboxes can authenticate.",
    )
    daily_recipient_limit = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Recipients it may send to in any 24 hours. Empty: the setting SMTP_DAILY_RECIPIENT_LIMIT; 0: no limit.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["inbox_id"]
        verbose_name_plural = "inboxes"
        indexes = [
            # AUTH by address (smtpgateway.auth.reads): found by its lower-cased form.
            models.Index(Lower("email"), name="inbox_email_lower"),
        ]

    def __str__(self) -> str:
        return self.inbox_id


class Message(models.Model):
    class Status(models.TextChoices):
        """Derived from its recipients' (delivery.states.message_status)."""

        QUEUED = "queued", "Queued"
        SENDING = "sending", "Sending"
        DELIVERED = "delivered", "Delivered"
        PARTLY_DELIVERED = "partly delivered", "Partly delivered"
        BOUNCED = "bounced", "Bounced"
        CANCELLED = "cancelled", "Cancelled"

    queue_id = models.CharField(max_length=32, unique=True, help_text="Given to the client in the 250 reply.")
    inbox = models.ForeignKey(Inbox, on_delete=models.PROTECT, related_name="messages")
    envelope_from = models.CharField(max_length=320)
    envelope_to = models.JSONField(help_text="Envelope recipients (RCPT TO), in order.")
    size = models.PositiveIntegerField(help_text="Bytes of the message as the client sent it.")
    message_id = models.CharField(max_length=998, blank=True, help_text="The Message-ID header, if any.")
    subject = models.CharField(max_length=998, blank=True)
    raw = models.BinaryField(help_text="The gateway's Received: header followed by the bytes as received.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    session_id = models.CharField(
        max_length=32,
        blank=True,
        default="",
        help_text="The SMTP session that submitted it (as in AuthAttempt rows and log lines).",
    )

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.queue_id


class SendingTally(models.Model):
    """Recipients of the messages an inbox (``scope`` "inbox") or an
    organization ("organization") sent in one minute: what the daily limits sum
    (``smtpgateway.storage.sending_limits``), at most 1,440 rows each for a day,
    however much was sent. Written with each message's commit; rows older than
    a day are deleted by ``pruneattempts``."""

    class Scope(models.TextChoices):
        INBOX = "inbox", "Inbox"
        ORGANIZATION = "organization", "Organization"

    scope = models.CharField(max_length=16, choices=Scope.choices)
    # The inbox's or the organization's primary key (no foreign key: a tally
    # outlives nothing it could refer to by more than a day).
    owner_id = models.BigIntegerField()
    minute = models.DateTimeField()
    recipients = models.PositiveIntegerField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["scope", "owner_id", "minute"], name="tally_per_minute")]

    def __str__(self) -> str:
        return f"{self.scope} {self.owner_id} {self.minute:%Y-%m-%d %H:%M}: {self.recipients}"


class RecipientHold(models.Model):
    """A recipient accepted by RCPT whose message is not committed yet: it counts
    toward the daily limits until the message is (its ``Recipient`` row then
    counts instead, in the same transaction) or the transaction ends without it.
    ``expires_at`` bounds what a process that died with the hold leaves behind."""

    # Indexed by the two indexes below, which start with these columns.
    inbox = models.ForeignKey(Inbox, on_delete=models.CASCADE, related_name="+", db_index=False)
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+", db_index=False)
    session_id = models.CharField(max_length=32)
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField()

    class Meta:
        indexes = [
            models.Index(fields=["inbox", "expires_at"], name="hold_inbox_expires"),
            models.Index(fields=["organization", "expires_at"], name="hold_organization_expires"),
        ]

    def __str__(self) -> str:
        return f"hold for {self.inbox_id} until {self.expires_at:%Y-%m-%d %H:%M:%S}"
