"""The outbound queue: each accepted message's recipients, every delivery attempt,
and the DKIM signing keys."""

from __future__ import annotations

from django.db import models
from django.db.models import Q

from delivery.states import DkimAlgorithm, RecipientStatus


class Recipient(models.Model):
    """One envelope recipient of one message, and where its delivery stands.

    queued -> (deferred)* -> delivered | bounced | expired | cancelled. A worker
    that claims it holds a lease (``lease_owner`` until ``lease_until``): another
    worker takes it only once the lease has run out."""

    # By queue id, which the gateway knows before the message row has a key: the
    # message and its recipients go into the database in one batch.
    message = models.ForeignKey(
        "inboxes.Message",
        to_field="queue_id",
        db_column="queue_id",
        on_delete=models.CASCADE,
        related_name="recipients",
    )
    address = models.CharField(max_length=320)
    status = models.CharField(max_length=16, choices=RecipientStatus.choices(), default=RecipientStatus.QUEUED)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(help_text="When the next attempt is due (queued and deferred only).")
    lease_owner = models.CharField(max_length=40, blank=True, help_text="The worker that holds it now.")
    lease_until = models.DateTimeField(null=True, blank=True)
    last_code = models.PositiveSmallIntegerField(null=True, blank=True, help_text="The upstream's last reply code.")
    last_enhanced_code = models.CharField(max_length=16, blank=True)
    last_reply = models.CharField(max_length=512, blank=True, help_text="Made printable and truncated.")
    finished_at = models.DateTimeField(
        null=True, blank=True, help_text="When it was delivered, bounced, expired or cancelled."
    )

    class Meta:
        indexes = [
            # What the workers claim: the due ones among those still to deliver.
            models.Index(
                fields=["next_attempt_at"],
                condition=Q(status__in=[RecipientStatus.QUEUED, RecipientStatus.DEFERRED]),
                name="recipient_pending_due",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.address} ({self.status})"


class DeliveryAttempt(models.Model):
    """One try at one recipient: when, how long, what the upstream said."""

    recipient = models.ForeignKey(Recipient, on_delete=models.CASCADE, related_name="attempts_made")
    started_at = models.DateTimeField()
    duration_ms = models.PositiveIntegerField()
    result = models.CharField(max_length=16, choices=RecipientStatus.choices())
    code = models.PositiveSmallIntegerField(null=True, blank=True)
    enhanced_code = models.CharField(max_length=16, blank=True)
    reply = models.CharField(
        max_length=512, blank=True, help_text="The upstream's reply (or what went wrong), made printable and truncated."
    )
    upstream = models.CharField(max_length=255, blank=True)
    tls_version = models.CharField(max_length=16, blank=True)
    tls_cipher = models.CharField(max_length=64, blank=True)
    dkim = models.CharField(
        max_length=255, blank=True, help_text="The DKIM selectors it was signed with, or why it was not."
    )

    class Meta:
        ordering = ["-started_at", "-id"]

    def __str__(self) -> str:
        return f"{self.started_at:%Y-%m-%d %H:%M:%S} {self.result}"


class DkimKey(models.Model):
    """A signing key for a domain. The private key stays in this row: never shown,
    logged or exported (``manage.py dkimkey add`` prints only the DNS record)."""

    domain = models.CharField(max_length=253, help_text="Lower case; messages whose From domain this is are signed.")
    selector = models.CharField(max_length=63)
    algorithm = models.CharField(max_length=16, choices=DkimAlgorithm.choices())
    private_key = models.TextField(help_text="Never shown.")
    public_key = models.TextField(help_text="Base64, as published in the p= tag.")
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["domain", "selector"], name="dkimkey_domain_selector")]
        verbose_name = "DKIM key"

    def __str__(self) -> str:
        return f"{self.selector}._domainkey.{self.domain} ({self.algorithm})"

    @property
    def dns_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    @property
    def dns_value(self) -> str:
        kind = "ed25519" if self.algorithm == DkimAlgorithm.ED25519 else "rsa"
        return f"v=DKIM1; k={kind}; p={self.public_key}"

    @property
    def dns_record(self) -> str:
        """The zone-file line to publish: a TXT string holds at most 255 bytes,
        so an RSA key's value is split into several, which DNS joins again."""
        value = self.dns_value
        strings = " ".join(f'"{value[start : start + 255]}"' for start in range(0, len(value), 255))
        return f"{self.dns_name}. IN TXT ( {strings} )"
