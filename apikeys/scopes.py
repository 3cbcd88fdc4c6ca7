"""The scopes an API key can carry. Pure data: no ORM."""

from __future__ import annotations

SMTP_SEND = "smtp:send"

# The known list that key scopes are validated against, with what each allows.
KNOWN_SCOPES: dict[str, str] = {
    SMTP_SEND: "Submit mail over SMTP as an inbox of the key's organization",
    "messages:read": "Read messages (API; not used by the SMTP gateway)",
    "inboxes:read": "Read inbox settings (API; not used by the SMTP gateway)",
}


def unknown_scopes(scopes: list[str]) -> list[str]:
    """The entries of ``scopes`` that are not in the known list."""
    return [scope for scope in scopes if scope not in KNOWN_SCOPES]
