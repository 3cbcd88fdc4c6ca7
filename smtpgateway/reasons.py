"""Why an AUTH attempt ended as it did. Pure data: the model's choices and the
authenticator's outcomes both use these codes, which are part of the interface."""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    OK = "OK"
    # The validation steps, in the order the authenticator applies them.
    INVALID_INBOX_FORMAT = "INVALID_INBOX_FORMAT"
    INVALID_API_KEY_FORMAT = "INVALID_API_KEY_FORMAT"
    MALFORMED_KEY = "MALFORMED_KEY"  # the checksummed shape, its checksum wrong
    API_KEY_NOT_FOUND = "API_KEY_NOT_FOUND"
    API_KEY_REVOKED = "API_KEY_REVOKED"
    API_KEY_EXPIRED = "API_KEY_EXPIRED"
    INSUFFICIENT_PERMISSIONS = "INSUFFICIENT_PERMISSIONS"
    INBOX_NOT_FOUND = "INBOX_NOT_FOUND"
    INBOX_DISABLED = "INBOX_DISABLED"
    INBOX_SUSPENDED = "INBOX_SUSPENDED"
    ORGANIZATION_MISMATCH = "ORGANIZATION_MISMATCH"
    INBOX_NOT_ALLOWED = "INBOX_NOT_ALLOWED"  # the key is limited to other inboxes
    # Exchanges that never reach validation, and faults.
    MALFORMED = "MALFORMED"
    AUTHZID_MISMATCH = "AUTHZID_MISMATCH"
    ABORTED = "ABORTED"
    UNSUPPORTED_MECHANISM = "UNSUPPORTED_MECHANISM"
    ENCRYPTION_REQUIRED = "ENCRYPTION_REQUIRED"
    RATE_LIMITED = "RATE_LIMITED"
    TEMPORARY_FAILURE = "TEMPORARY_FAILURE"

    @property
    def label(self) -> str:
        """What an operator reads (the admin); the code stays the stored value."""
        return LABELS[self]

    @classmethod
    def choices(cls) -> list[tuple[str, str]]:
        return [(member.value, member.label) for member in cls]


LABELS = {
    Reason.OK: "Authenticated",
    Reason.INVALID_INBOX_FORMAT: "Malformed inbox id",
    Reason.INVALID_API_KEY_FORMAT: "Malformed API key",
    Reason.MALFORMED_KEY: "API key with a wrong checksum",
    Reason.API_KEY_NOT_FOUND: "API key not found",
    Reason.API_KEY_REVOKED: "API key revoked",
    Reason.API_KEY_EXPIRED: "API key expired",
    Reason.INSUFFICIENT_PERMISSIONS: "API key lacks smtp:send",
    Reason.INBOX_NOT_FOUND: "Inbox not found",
    Reason.INBOX_DISABLED: "Inbox disabled",
    Reason.INBOX_SUSPENDED: "Inbox suspended",
    Reason.ORGANIZATION_MISMATCH: "Key of another organization",
    Reason.INBOX_NOT_ALLOWED: "Key limited to other inboxes",
    Reason.MALFORMED: "Malformed AUTH exchange",
    Reason.AUTHZID_MISMATCH: "Other authorization identity",
    Reason.ABORTED: "Aborted by the client",
    Reason.UNSUPPORTED_MECHANISM: "Unsupported mechanism",
    Reason.ENCRYPTION_REQUIRED: "Encryption required",
    Reason.RATE_LIMITED: "Rate limited",
    Reason.TEMPORARY_FAILURE: "Temporary failure",
}


# Failed credential checks: what the per-address rate limit counts.
CREDENTIAL_FAILURES = tuple(
    reason.value
    for reason in (
        Reason.INVALID_INBOX_FORMAT,
        Reason.INVALID_API_KEY_FORMAT,
        Reason.MALFORMED_KEY,
        Reason.API_KEY_NOT_FOUND,
        Reason.API_KEY_REVOKED,
        Reason.API_KEY_EXPIRED,
        Reason.INSUFFICIENT_PERMISSIONS,
        Reason.INBOX_NOT_FOUND,
        Reason.INBOX_DISABLED,
        Reason.INBOX_SUSPENDED,
        Reason.ORGANIZATION_MISMATCH,
        Reason.INBOX_NOT_ALLOWED,
    )
)
