"""An inbox's status values, without the ORM: the model's choices and the AUTH
rules (``smtpgateway.auth.rules``) both use them."""

from __future__ import annotations

from enum import StrEnum


class InboxStatus(StrEnum):
    ACTIVE = "active"
    DISABLED = "disabled"
    SUSPENDED = "suspended"
