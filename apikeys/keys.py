"""API key crypto: generate, recognise, digest and verify keys. No ORM here.

A new key is ``amk_``, 36 random letters and digits from ``secrets`` (about 214
bits of entropy), and a 6-character checksum: the CRC32 of ``amk_`` and the
random part, in base 62, zero-padded (GitHub's token scheme). A secret scanner
recognises one offline with ``\bamk_[A-Za-z0-9]{42}\b`` and can tell a real key
from a lookalike by the checksum; the gateway refuses a key of this shape whose
checksum is wrong (``MALFORMED_KEY``) before any database read.

Keys issued before (``am_`` followed by 32 to 64 letters and digits, 40 when
issued here) keep working; nothing new is issued in that shape.

Why a plain SHA-256 and not a slow password hash: slow hashes exist to make
guessing low-entropy *passwords* expensive. A random 238-bit key cannot be guessed
whatever the hash costs, so a fast digest loses nothing and lets the gateway look a
key up by its digest with one indexed query per AUTH. The digest is unkeyed on
purpose: it must not depend on ``SECRET_KEY`` or any per-install secret, so that
fixtures and issued keys survive a secret rotation.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
import zlib

KEY_PREFIX = "amk_"
KEY_RANDOM_LENGTH = 36
CHECKSUM_LENGTH = 6
CHECKSUMMED_KEY_PATTERN = re.compile(rf"amk_[a-zA-Z0-9]{{{KEY_RANDOM_LENGTH + CHECKSUM_LENGTH}}}")
LEGACY_KEY_PATTERN = re.compile(r"am_[a-zA-Z0-9]{32,64}")
# Either shape (the checksum unchecked): what is withheld wherever a key might show.
KEY_PATTERN = re.compile(rf"{CHECKSUMMED_KEY_PATTERN.pattern}|{LEGACY_KEY_PATTERN.pattern}")
# How much of a key stays visible (in the admin, in AuthAttempt rows, in logs):
# the prefix and 6 or 7 more characters, leaving over 170 bits secret.
VISIBLE_PREFIX_LENGTH = 10

_ALPHABET = string.digits + string.ascii_uppercase + string.ascii_lowercase  # base 62, in GitHub's order


def generate_key() -> str:
    """Return a new plaintext key. Show it once; store only its digest."""
    body = KEY_PREFIX + "".join(secrets.choice(_ALPHABET) for _ in range(KEY_RANDOM_LENGTH))
    return body + checksum(body)


def checksum(body: str) -> str:
    """The CRC32 of ``body`` in base 62, six characters (2**32 < 62**6)."""
    value, digits = zlib.crc32(body.encode("ascii")), []
    for _ in range(CHECKSUM_LENGTH):
        value, digit = divmod(value, 62)
        digits.append(_ALPHABET[digit])
    return "".join(reversed(digits))


def is_well_formed(candidate: str) -> bool:
    """True if ``candidate`` has the shape of an API key, with a right checksum
    if it is of the checksummed shape (says nothing of validity)."""
    if CHECKSUMMED_KEY_PATTERN.fullmatch(candidate) is not None:
        return checksum(candidate[:-CHECKSUM_LENGTH]) == candidate[-CHECKSUM_LENGTH:]
    return LEGACY_KEY_PATTERN.fullmatch(candidate) is not None


def has_bad_checksum(candidate: str) -> bool:
    """A key of the checksummed shape whose checksum is wrong: a typo, a lookalike, a guess."""
    return CHECKSUMMED_KEY_PATTERN.fullmatch(candidate) is not None and not is_well_formed(candidate)


def visible_prefix(key: str) -> str:
    """The part of a key that may be shown and stored next to its digest."""
    return key[:VISIBLE_PREFIX_LENGTH]


def digest_key(key: str) -> str:
    """Hex SHA-256 of the key: what the database stores and looks keys up by."""
    return hashlib.sha256(key.encode("ascii")).hexdigest()


def verify_key(key: str, stored_digest: str) -> bool:
    """Constant-time check of a plaintext key against a stored digest."""
    return hmac.compare_digest(digest_key(key), stored_digest)
