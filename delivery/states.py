"""The delivery states and the DKIM algorithms, as plain values (no ORM)."""

from __future__ import annotations

from enum import StrEnum


class RecipientStatus(StrEnum):
    QUEUED = "queued"
    DEFERRED = "deferred"
    DELIVERED = "delivered"
    BOUNCED = "bounced"
    EXPIRED = "expired"
    CANCELLED = "cancelled"

    @classmethod
    def choices(cls) -> list[tuple[str, str]]:
        return [(member.value, member.value) for member in cls]


PENDING = (RecipientStatus.QUEUED, RecipientStatus.DEFERRED)
FAILED = (RecipientStatus.BOUNCED, RecipientStatus.EXPIRED, RecipientStatus.CANCELLED)


class MessageStatus(StrEnum):
    """A message's status, derived from its recipients'."""

    QUEUED = "queued"  # nothing tried yet
    SENDING = "sending"  # some still to deliver, some tried
    DELIVERED = "delivered"
    PARTLY_DELIVERED = "partly delivered"  # all done, some delivered, some not
    BOUNCED = "bounced"  # all done, none delivered (bounced or expired)
    CANCELLED = "cancelled"  # all cancelled by an operator


def message_status(statuses: list[str], attempted: bool) -> MessageStatus:
    """The message's status from its recipients' statuses."""
    if any(status in PENDING for status in statuses):
        return MessageStatus.SENDING if attempted else MessageStatus.QUEUED
    delivered = sum(status == RecipientStatus.DELIVERED for status in statuses)
    if delivered == len(statuses):
        return MessageStatus.DELIVERED
    if delivered:
        return MessageStatus.PARTLY_DELIVERED
    if all(status == RecipientStatus.CANCELLED for status in statuses):
        return MessageStatus.CANCELLED
    return MessageStatus.BOUNCED


class DkimAlgorithm(StrEnum):
    RSA_SHA256 = "rsa-sha256"
    ED25519_SHA256 = "ed25519-sha256"
    ED25519 = "ed25519-sha256"  # the same: for readability where the key kind is meant

    @classmethod
    def choices(cls) -> list[tuple[str, str]]:
        return [(member.value, member.value) for member in (cls.RSA_SHA256, cls.ED25519_SHA256)]
