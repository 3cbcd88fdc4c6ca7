"""Shapes of public identifiers. Pure data: no ORM."""

from __future__ import annotations

import re

INBOX_ID_PATTERN = re.compile(r"inb_[a-zA-Z0-9]{12,32}")
ORGANIZATION_ID_PATTERN = re.compile(r"org_[a-zA-Z0-9_]{1,60}")
