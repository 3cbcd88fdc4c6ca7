"""Turn untrusted client bytes into text that is safe to store and show."""

from __future__ import annotations

import re

from apikeys.keys import KEY_PATTERN, visible_prefix

_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Control characters, and the surrogates aiosmtpd decodes bytes that are not
# UTF-8 to: what no header line may hold, and what PostgreSQL will not store
# (NUL) or no driver can encode (surrogates). (Mailboxes: smtpgateway.session.addresses.)
CONTROL_OR_UNDECODABLE = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")


def printable(raw: bytes, limit: int) -> str:
    """Decode ``raw`` losslessly (invalid UTF-8 and control characters become
    backslash escapes, so NUL never reaches PostgreSQL) and cut it to ``limit``."""
    text = raw[: limit * 4].decode("utf-8", errors="backslashreplace")
    text = _UNPRINTABLE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def printable_text(text: str, limit: int) -> str:
    """:func:`printable` for text aiosmtpd already decoded (undecodable bytes as
    surrogates, which no database driver can encode)."""
    if text.isascii() and text.isprintable() and len(text) <= limit:  # the usual case, e.g. "PLAIN"
        return text
    return printable(text.encode("utf-8", errors="surrogateescape"), limit)


def presented_username(raw: bytes, limit: int) -> str:
    """The username as it may be recorded. People paste the key into the username
    field; such a value is withheld except for its visible prefix."""
    text = printable(raw, limit)
    if KEY_PATTERN.search(text):
        return f"{visible_prefix(text)}… (withheld: looks like an API key)"
    return text
