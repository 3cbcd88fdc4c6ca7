"""Shapes of public identifiers. Pure data: no ORM."""

from __future__ import annotations

import re

INBOX_ID_PATTERN = re.compile(r"inb_[a-zA-Z0-9]{12,32}")
ORGANIZATION_ID_PATTERN = re.compile(r"org_[a-zA-Z0-9_]{1,60}")
# An inbox's email address as an SMTP username (AgentMail's form): the local part
# is compared as stored, the domain without case.
INBOX_ADDRESS_PATTERN = re.compile(r"[^@\s]{1,64}@[^@\s]{1,255}")


def address_key(address: str) -> str:
    """An address as it is looked up: the local part as it is, the domain in lower case."""
    local, _, domain = address.rpartition("@")
    return f"{local}@{domain.lower()}"


def inbox_lookup_name(username: str) -> str | None:
    """What an SMTP username names an inbox by: its id (``inb_...``) as it is, or
    its address (``address_key``); None if it is neither form."""
    if INBOX_ID_PATTERN.fullmatch(username) is not None:
        return username
    if INBOX_ADDRESS_PATTERN.fullmatch(username) is not None:
        return address_key(username)
    return None
